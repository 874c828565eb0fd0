"""The input every benchmark stage runs on: synthetic streams, made once per ``bench`` run."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

from fusionstream.stream import wire
from fusionstream.stream.records import Record
from fusionstream.stream.sources import SyntheticAV, SyntheticConfig
from fusionstream.stream.windows import Window, WindowConfig
from fusionstream.units import NS

#: The synthetic source's frames (width, height): a little larger than the shipped model's 64x64 input.
DEFAULT_FRAME_SIZE = (96, 96)


@dataclass(frozen=True)
class Workload:
    """``streams`` synthetic streams of ``seconds`` each (15 fps JPEG, 16 kHz PCM in 40 ms chunks,
    captions), in event-time order, with the default corruption: some windows lack a modality,
    as in the field, and those skip their encoder. Frames are 96x96 unless ``frame_size`` says
    otherwise (a camera's resolution, to see what decoding it costs)."""

    records: tuple[Record, ...]
    streams: int
    seconds: float

    @classmethod
    def synthetic(
        cls, streams: int, seconds: float, seed: int = 0, frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE
    ) -> Workload:
        config = SyntheticConfig(streams=streams, seconds=seconds, seed=seed, stream_prefix="bench",
                                 frame_size=frame_size)
        return cls(tuple(SyntheticAV(config).records()), streams, seconds)

    @cached_property
    def encoded(self) -> tuple[bytes, ...]:
        """The wire bytes of every record, as a broker would deliver them."""
        return tuple(wire.encode(record) for record in self.records)

    def windows(self, config: WindowConfig, min_side: int = 0) -> list[Window]:
        """Every window of the workload, aligned, its sampled frames decoded as the pipeline decodes them
        (no larger than ``min_side`` needs, see ``fusionstream.stream.jpeg.decode_jpeg``): what the engine gets."""
        from fusionstream.consumers.pipeline.core import decode_sampled_frames
        from fusionstream.consumers.training.dataset import windows_of

        windows = list(windows_of(self.records, config, lazy_jpeg=True))
        return [decoded for _, decoded, _ in decode_sampled_frames(windows, min_side)]

    def declared(self, modalities: Sequence[str]) -> Workload:
        """The workload without the records of modalities a model does not use (the pipeline ignores them)."""
        kept = tuple(record for record in self.records if record.modality.label in modalities)
        return dataclasses.replace(self, records=kept)

    def stream_ids(self) -> list[str]:
        return sorted({record.stream_id for record in self.records})

    def cloned(self, streams: int, start_ns: int, seconds: float | None = None) -> list[Record]:
        """``streams`` streams in event-time order, stream i a copy of base stream ``i % self.streams``
        under its own id, shifted to start at ``start_ns`` (a wall-clock time for real-time runs) and
        cut after ``seconds``. Copies share pixels and text with their base stream, not embeddings:
        every cache is keyed by stream."""
        base = self.stream_ids()
        first = min(record.t_start_ns for record in self.records)
        limit = first + int((seconds or self.seconds) * NS)
        by_stream: dict[str, list[Record]] = {sid: [] for sid in base}
        for record in self.records:
            if record.t_start_ns < limit:
                by_stream[record.stream_id].append(record)
        shift = start_ns - first
        out = [
            dataclasses.replace(
                record,
                stream_id=f"rt{i:04d}",
                t_start_ns=record.t_start_ns + shift,
                t_end_ns=record.t_end_ns + shift,
            )
            for i in range(streams)
            for record in by_stream[base[i % len(base)]]
        ]
        out.sort(key=lambda r: (r.t_start_ns, r.stream_id))
        return out


def chunks(items: tuple[bytes, ...], size: int) -> Iterator[list[tuple[bytes, None]]]:
    """``(value, ref)`` pairs in lists of ``size``, the shape ``Pipeline.feed`` takes."""
    for i in range(0, len(items), size):
        yield [(value, None) for value in items[i : i + size]]
