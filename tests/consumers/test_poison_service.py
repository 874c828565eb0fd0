"""A captions-only stream whose caption the text encoder breaks on, through the broker: the service goes on.

Before, such a window (nothing to predict it from without its text) stopped `serve`, and every restart stopped
again on the same records. Now it gets no prediction, counted and logged; the stream's other windows are
published, and the window's records are released, so the committed offsets move past the caption."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from servicekit import service_settings, serving
from test_faust_offsets import _committed

from fusionstream.stream.media import text_record
from fusionstream.units import MS, NS

T0 = 1_767_225_600 * NS
CAPTIONS = ((200, "one two"), (2200, "eight"), (4200, "three"), (6200, "two one"), (8200, "three"))


def test_kafka_a_caption_the_encoder_breaks_on_costs_its_windows_only(
    kafka_bootstrap: str, topic_prefix: str, poisoned: Path
) -> None:
    settings = service_settings(kafka_bootstrap, topic_prefix, poisoned)
    records = [text_record("captions", seq, T0 + start * MS, T0 + (start + 400) * MS, words)
               for seq, (start, words) in enumerate(CAPTIONS)]
    last = T0 + CAPTIONS[-1][0] * MS

    def expected(starts: set[int]) -> set[int]:
        """Every window of the stream's grid (staggered per stream) overlapping a caption but "eight"'s."""
        offset = (min(starts) - T0) % (500 * MS)
        grid = [T0 + offset + k * 500 * MS for k in range(-4, 20)]
        spans = [(T0 + start * MS, T0 + (start + 400) * MS, words) for start, words in CAPTIONS]
        overlapping = {w: {words for a, b, words in spans if w < b and w + 1000 * MS > a} for w in grid}
        return {w for w, held in overlapping.items() if held and "eight" not in held}

    async def scenario() -> tuple[set[int], float, int, bool]:
        async with serving(settings, records) as (running, reader):
            await reader.until(lambda r: any(t > last for _, t in r.windows()))
            registry = running.service.metrics.registry
            deadline = time.monotonic() + 30
            committed = 0
            while time.monotonic() < deadline:  # every record released: the commits reach the end
                committed = sum((await _committed(kafka_bootstrap, settings.group_id, settings.text_topic)).values())
                if committed >= len(records):
                    break
                await asyncio.sleep(0.5)
            await reader.poll(500)
            failed = registry.get_sample_value("fusionstream_windows_failed_total") or 0.0
            return {t for _, t in reader.windows()}, failed, committed, running.task.done()

    published, failed, committed, stopped = asyncio.run(scenario())
    assert not stopped, "the service went on"
    wanted = expected(published)
    assert len(wanted) >= 10 and published == wanted, sorted((t - T0) // MS for t in published ^ wanted)
    assert failed == 3
    assert committed == len(records), f"committed {committed} of {len(records)}: the failed windows' records held"
