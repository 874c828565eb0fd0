"""CPU the aligner spends per window on a live feed, as the service drives it (docs/performance.md).

    .venv/bin/python scripts/aligner_cost.py [--streams 32] [--seconds 20] [--fetch-ms 15] [--rounds 3] [--profile]

Replays the live trials' realistic delivery (``fusionstream bench --live-streams``: frames 0-80 ms after
capture, audio chunks as they end, each word 300-700 ms after it ends, our producers' progress) through
an aligner with revisions on and ``text_wait_ms`` 700, in fetch-sized batches: each batch's records
added, then what ``Pipeline.feed`` calls after a fetch (``poll`` and ``provisional`` of the streams it
moved, ``ready``), and every 100 ms what ``Pipeline.tick`` calls. No broker, no engine, one thread: the
process CPU time of the replay (wire records decoded beforehand) over the windows closed, best of
``--rounds``. ``--profile`` adds cProfile's top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time

from fusionstream.consumers.bench.delivery import REALISTIC
from fusionstream.consumers.bench.workload import NS, Workload
from fusionstream.consumers.settings import Settings
from fusionstream.engines.manifest import load_manifest
from fusionstream.stream.aligner import Aligner
from fusionstream.stream.media import decode_media
from fusionstream.stream.records import MediaItem, Progress
from fusionstream.stream.windows import WindowConfig
from fusionstream.units import MS

TICK_NS = 100 * MS


def replay(config: WindowConfig, items: list[tuple[int, MediaItem | Progress]], fetch_ns: int) -> tuple[int, int]:
    """(final windows, all windows offered or closed) of one replay."""
    aligner = Aligner(config)
    finals = offered = 0
    now = ticked = items[0][0]
    i, n = 0, len(items)
    while i < n:
        now += fetch_ns
        while i < n and items[i][0] <= now:
            item = items[i][1]
            if isinstance(item, Progress):
                aligner.progress(item, now)
            else:
                aligner.add(item, now)
            i += 1
        recent = aligner.take_recent()
        closed = aligner.poll(now, recent)
        early = aligner.provisional(now, streams=recent)
        ahead = aligner.ready(now)
        if now - ticked >= TICK_NS:
            ticked = now
            closed += aligner.poll(now)
            early += aligner.provisional(now)
        finals += sum(w.final for w in closed)
        offered += len(closed) + len(early) + len(ahead)
    return finals, offered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--fetch-ms", type=float, default=15.0, help="event time between fetches")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    settings = Settings(text_wait_ms=700, revisions=True)
    config = settings.model_window_config(load_manifest(settings.model_dir))
    workload = Workload.synthetic(args.streams, args.seconds, 0).declared(("video", "audio", "text"))
    schedule = REALISTIC.schedule(workload.cloned(args.streams, 1_800_000_000 * NS, args.seconds))
    items = [(due, decode_media(record, lazy_jpeg=True)) for due, record in schedule]
    fetch_ns = round(args.fetch_ms * MS)
    best = float("inf")
    for _ in range(args.rounds):
        started = time.process_time()
        finals, offered = replay(config, items, fetch_ns)
        best = min(best, time.process_time() - started)
    print(f"{len(items)} records, {finals} final windows ({offered} windows built in all): "
          f"{best * 1e3 / finals:.3f} CPU ms per final window (best of {args.rounds})")
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(replay, config, items, fetch_ns)
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
