"""Score the predictions `fusionstream serve` published against the ground truth `produce synthetic --truth` wrote.

    fusionstream produce synthetic --streams 2 --seconds 60 --truth truth.json [--asr ...]
    fusionstream tail --json --from-beginning --until-end > predictions.jsonl
    .venv/bin/python scripts/score_predictions.py truth.json predictions.jsonl

The same figures as the demo's summary (consumers/report.py): accuracy over clear windows and over
every window with a digit. A window published more than once (revisions, or a replay after a
restart) counts once, with its latest revision; predictions of streams the truth does not know
(another producer on the same topics) are left out and counted. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fusionstream.consumers.report import score_labels
from fusionstream.stream.sources.truth import GroundTruth


def score(truth: GroundTruth, lines: list[str]) -> dict[str, Any]:
    latest: dict[str, dict[str, Any]] = {}
    foreign = 0
    for line in lines:
        if not line.strip():
            continue
        value = json.loads(line)
        if value["stream_id"] not in truth.stream_ids:
            foreign += 1
            continue
        kept = latest.get(value["window_id"])
        if kept is None or value.get("revision", 0) >= kept.get("revision", 0):
            latest[value["window_id"]] = value
    windows = list(latest.values())
    scored = score_labels(((w["stream_id"], w["t_start_ns"], w["t_end_ns"], w["label"]) for w in windows), truth)
    with_text = sum(bool(w["modalities"].get("text")) for w in windows)
    return {
        "windows": len(windows),
        **scored,
        "windows_with_text": round(with_text / len(windows), 4) if windows else None,
        "not_final": sum(not w.get("final", True) for w in windows),
        "other_streams": foreign,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("truth", type=Path, help="ground truth JSON (produce synthetic --truth)")
    parser.add_argument("predictions", nargs="?", default="-", help="prediction JSON lines (tail --json); - for stdin")
    args = parser.parse_args()
    truth = GroundTruth.from_dict(json.loads(args.truth.read_text()))
    text = sys.stdin.read() if args.predictions == "-" else Path(args.predictions).read_text()
    print(json.dumps(score(truth, text.splitlines())))


if __name__ == "__main__":
    main()
