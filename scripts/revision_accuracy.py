"""How accurate early predictions are (docs/predictions.md#revisions): provisional, final and amended
predictions against the ground truth, beside the same windows with revisions off.

    .venv/bin/python scripts/revision_accuracy.py --streams 8 --seconds 120 [--text-wait-ms auto|off|700]

Held-out synthetic streams (the speech bank's test voices, the default corruption) are delivered as
`fusionstream bench`'s realistic profile delivers them (consumers/bench/delivery.py: words 300-700 ms
after they end, progress as our producers send it) to the embedded pipeline of the shipped model (or
--model), on a simulated clock: each record enters at its delivery time, so the windows, the
provisional predictions and the finals are those a live service would make, whatever this machine's
speed. The run is made twice, revisions off then on, and scored over clear windows:

- ``off``: the prediction of each window with revisions off (today's behaviour);
- ``first_final``: the first final of each window with revisions on (must equal ``off``: the same windows,
  the same inputs);
- ``provisional``: the provisional predictions (compare with `fusionstream evaluate --json`'s
  ``without.text``);
- ``latest``: each window's latest revision (amended finals included).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from fusionstream.consumers.bench.delivery import REALISTIC
from fusionstream.consumers.pipeline.core import Pipeline
from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.consumers.pipeline.runner import Runner
from fusionstream.consumers.report import score_labels
from fusionstream.consumers.settings import Settings
from fusionstream.engines.backends import open_runtime
from fusionstream.stream.sources import SyntheticAV, SyntheticConfig
from fusionstream.stream.sources.truth import GroundTruth
from fusionstream.units import MS

TICK_NS = 10 * MS


async def _run(runner: Runner, settings: Settings, schedule: list[tuple[int, Any]]) -> list[Prediction]:
    config = settings.model_window_config(runner.runtime.manifest)
    now = [schedule[0][0]]
    out: list[Prediction] = []
    async with Pipeline(runner, config, clock=lambda: now[0], speculate=False) as pipeline:

        async def collect() -> None:
            async for prediction in pipeline.predictions():
                out.append(prediction)

        collector = asyncio.create_task(collect())
        i = 0
        while i < len(schedule):
            now[0] = schedule[i][0]
            j = i
            while j < len(schedule) and schedule[j][0] < now[0] + TICK_NS:
                j += 1
            await pipeline.feed([(record, None) for _, record in schedule[i:j]])
            i = j
        await pipeline.flush()
        await pipeline.drain()
        await pipeline.close_output()
        await collector
    return out


def _score(predictions: list[Prediction], truth: GroundTruth) -> dict[str, Any]:
    scored = score_labels(((p.stream_id, p.t_start_ns, p.t_end_ns, p.label) for p in predictions), truth)
    scored["with_text"] = sum(p.mask[2] for p in predictions)
    return scored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=10_000)
    parser.add_argument("--text-wait-ms", default="auto", help="auto (the default), off or milliseconds")
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    source = SyntheticAV(SyntheticConfig(streams=args.streams, seconds=args.seconds, seed=args.seed, voices="test"))
    records = list(source.records())
    schedule = REALISTIC.schedule(records)
    base = Settings(text_wait_ms=args.text_wait_ms, **({} if args.model is None else {"model_dir": args.model}))
    result: dict[str, Any] = {"streams": args.streams, "seconds": args.seconds, "seed": args.seed,
                              "text_wait_ms": base.text_wait_ms, "profile": REALISTIC.describe()}
    with open_runtime("onnxruntime", base.model_dir) as runtime:
        for revisions in (False, True):
            settings = base.model_copy(update={"revisions": revisions})
            predictions = asyncio.run(_run(Runner(runtime), settings, list(schedule)))
            if not revisions:
                result["off"] = _score(predictions, source.truth)
                continue
            first_final: dict[str, Prediction] = {}
            latest: dict[str, Prediction] = {}
            for p in predictions:
                if p.final:
                    first_final.setdefault(p.window_id, p)
                if p.window_id not in latest or p.revision >= latest[p.window_id].revision:
                    latest[p.window_id] = p
            result["first_final"] = _score(list(first_final.values()), source.truth)
            result["provisional"] = _score([p for p in predictions if not p.final], source.truth)
            result["latest"] = _score(list(latest.values()), source.truth)
            result["amended"] = sum(p.closed_by == "amended" for p in predictions)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
