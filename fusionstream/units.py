"""Time units. Event times are integer Unix-epoch nanoseconds everywhere (docs/wire-format.md);
these say how many nanoseconds a second and a millisecond hold, once for every part."""

#: Nanoseconds per second.
NS = 1_000_000_000
#: Nanoseconds per millisecond.
MS = 1_000_000
