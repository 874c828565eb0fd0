"""What a ``late`` dead letter says: how far behind its stream's open windows the record is, and, far behind, the
likely cause. A fixed sentence read the same for a record 5 s late and one 56 years late (a device whose clock
was reset to 1970); the distance tells a slow transcript from a clock that went back."""

from __future__ import annotations

from fusionstream.units import NS

#: Beyond this, a late record is not a slow source but a clock that went back (or old records resent).
CLOCK_SUSPECT_NS = 60 * NS


def late_detail(t_end_ns: int, closed_until_ns: int | None) -> str:
    """The ``fs.detail`` of a late record ending at ``t_end_ns``, its stream's windows closed up to
    ``closed_until_ns``."""
    said = "every window this record belongs to is closed"
    if closed_until_ns is None or closed_until_ns <= t_end_ns:
        return said
    behind = closed_until_ns - t_end_ns
    said += f": it ends {how_long(behind)} before the stream's first open window"
    if behind >= CLOCK_SUSPECT_NS:
        said += (" (its source's clock went back, a reset or an NTP step, or it resent old records: the stream's "
                 "records are late until its clock passes where it was)")
    return said


def how_long(ns: int) -> str:
    """``0.350 s``, ``42.0 s``, ``12 min``, ``3.1 h``, ``4 days``, ``56 years``."""
    seconds = ns / NS
    if seconds < 10:
        return f"{seconds:.3f} s"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    if seconds < 2 * 365 * 86400:
        return f"{seconds / 86400:.0f} days"
    return f"{seconds / (365.25 * 86400):.0f} years"
