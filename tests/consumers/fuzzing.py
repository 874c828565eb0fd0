"""Seeded mutations of wire records for the fuzz test: bit flips, truncation, header fields, versions, garbage."""

from __future__ import annotations

import json
import random
import struct

from fusionstream.stream import wire

#: (name, struct format) of the header fields after the magic, in order (stream/wire.py HEADER).
_FIELDS = (("version", "B"), ("modality", "B"), ("encoding", "B"), ("flags", "B"), ("stream_id_len", "H"),
           ("seq", "Q"), ("t_start_ns", "q"), ("t_end_ns", "q"), ("meta_len", "I"), ("payload_len", "I"))
_SOF = (b"\xff\xc0", b"\xff\xc2")


def _random_value(rng: random.Random, fmt: str, old: int) -> int:
    bits = struct.calcsize(fmt) * 8
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if fmt.islower() else (0, 2**bits - 1)
    choice = rng.random()
    if choice < 0.3:
        value = rng.choice([low, high, 0, 1, -1, old + 1, old - 1])
    elif choice < 0.6:
        value = old + rng.choice([-1, 1]) * rng.randrange(1, 2**rng.randrange(1, bits))
    else:
        value = rng.randint(low, high)
    return min(max(value, low), high)


def _bit_flips(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _header_field(rng: random.Random, data: bytes) -> bytes:
    values = list(wire.HEADER.unpack_from(data))
    k = rng.randrange(len(_FIELDS))
    values[k + 1] = _random_value(rng, _FIELDS[k][1], values[k + 1])
    return wire.HEADER.pack(*values) + data[wire.HEADER_SIZE :]


def _meta(rng: random.Random, data: bytes) -> bytes:
    values = list(wire.HEADER.unpack_from(data))
    sid_end = wire.HEADER_SIZE + values[5]
    old = data[sid_end : sid_end + values[9]]
    junk = rng.choice([
        b"[]", b"null", b"{", b'{"sample_rate": 0, "channels": 1}', b'{"sample_rate": -16000, "channels": 1}',
        b'{"sample_rate": 16000, "channels": 0}', b'{"sample_rate": 8000, "channels": 1}',
        b'{"sample_rate": 1e400}', b'{"language": 7}', b'{"is_final": "yes"}', b'{"width": 2, "height": 2}',
        b"\xc3\x28", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))), old + b" ",
        json.dumps({"k" * rng.randrange(1, 50): list(range(rng.randrange(50)))}).encode(),
    ])
    values[9] = len(junk)
    return wire.HEADER.pack(*values) + data[wire.HEADER_SIZE : sid_end] + junk + data[sid_end + len(old) :]


def _payload(rng: random.Random, data: bytes) -> bytes:
    """Overwrite a slice of the payload (lengths stay consistent): damaged media, or a JPEG size field."""
    values = list(wire.HEADER.unpack_from(data))
    start = len(data) - values[10]
    if values[10] == 0:
        return data + b"x"
    out = bytearray(data)
    sof = max(data.find(marker, start) for marker in _SOF)
    if sof > 0 and rng.random() < 0.3:  # the frame header's height and width: a JPEG's size claim
        out[sof + 5 : sof + 9] = rng.randbytes(4)
        return bytes(out)
    i = rng.randrange(start, len(data))
    n = min(rng.randint(1, 64), len(data) - i)
    out[i : i + n] = rng.randbytes(n)
    return bytes(out)


def _garbage(rng: random.Random, data: bytes) -> bytes:
    body = rng.randbytes(rng.randrange(0, 600))
    return rng.choice([b"", b"FS", b"FS\x01", data[: wire.HEADER_SIZE]]) + body


MUTATIONS = {
    "bit-flips": _bit_flips,
    "truncation": lambda rng, data: data[: rng.randrange(len(data))],
    "trailing": lambda rng, data: data + rng.randbytes(rng.randint(1, 32)),
    "header-field": _header_field,
    "version": lambda rng, data: data[:2] + bytes([rng.choice([0, 2, 3, 127, 255])]) + data[3:],
    "meta": _meta,
    "payload": _payload,
    "garbage": _garbage,
}


def mutate(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """One seeded mutation of valid wire bytes: (its kind, the mutated bytes)."""
    kind = rng.choice(sorted(MUTATIONS))
    return kind, MUTATIONS[kind](rng, data)
