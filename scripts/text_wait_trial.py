"""What the transcript's wait budget costs and saves on word-at-a-time feeds (docs/predictions.md#revisions).

    .venv/bin/python scripts/text_wait_trial.py [--seeds 8]

Live video (15 fps) and audio (40 ms chunks) with a transcript of words of 250-500 ms, 50-300 ms apart and
a pause of 2-4 s now and then, each word published some time after it ends, in spoken order
(``tests/stream/test_late_transcript.py``'s feeds), through an aligner polled every 20 ms as the service
polls it, on a simulated clock (the figures do not depend on the machine). For each feed and each
``text_wait_ms`` (``auto``, ``off``, fixed budgets): the share of words late (in no window: dead letters)
and partly late (missing from a window that closed before them), and how long after its end each window
closed (p50 and p95, ms: what a final waits), averaged over the seeds. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

from fusionstream.stream.records import Modality
from fusionstream.stream.windows import WindowConfig
from fusionstream.units import MS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the feeds are the tests'
from tests.stream.test_late_transcript import _replay

FEEDS = {
    "captioner, 50-200 ms": {"delay_ms": (50, 200)},
    "streaming ASR, 0.3-1.5 s": {"delay_ms": (300, 1500)},
    "slow ASR, 0.8-2.5 s": {"delay_ms": (800, 2500)},
    "captioner that stops at 20 s": {"delay_ms": (50, 200), "stop_ms": 20_000},
}
BUDGETS = {
    "auto": WindowConfig(learn_wait=frozenset({Modality.TEXT})),
    "off": WindowConfig(),
    "700": WindowConfig(wait_ns=((Modality.TEXT, 700 * MS),)),
    "2000": WindowConfig(wait_ns=((Modality.TEXT, 2000 * MS),)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    print("| feed | `text_wait_ms` | words late | partly late | window end → closed p50 / p95 (ms) |")
    print("|---|---|---|---|---|")
    for feed, shape in FEEDS.items():
        for name, config in BUDGETS.items():
            runs = [_replay(seed, config, **shape) for seed in range(1, args.seeds + 1)]
            late = statistics.mean(r[0] for r in runs)
            partly = statistics.mean(r[1] for r in runs)
            p50 = statistics.mean(float(np.percentile(r[2], 50)) for r in runs) / MS
            p95 = statistics.mean(float(np.percentile(r[2], 95)) for r in runs) / MS
            print(f"| {feed} | {name} | {late:.1%} | {partly:.1%} | {p50:,.0f} / {p95:,.0f} |")


if __name__ == "__main__":
    main()
