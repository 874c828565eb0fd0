"""``produce video FILE`` on a file with one track: said, then published (an outside user's audio-only WAV went
out as "video 0" with no remark, under a help that says "video and audio tracks")."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from test_produce import DEADLINE_S, FUSIONSTREAM, REPO_ROOT, _env, write_mp4


def test_kafka_a_file_without_an_audio_track_is_said_and_its_video_published(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    silent = write_mp4(tmp_path / "silent.mp4", audio=False)
    done = subprocess.run([*FUSIONSTREAM, "produce", "video", str(silent), "--no-pacing", "--json", "-q"],
                          env=_env(kafka_bootstrap, topic_prefix), cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr
    assert f"{silent} has no audio track: its video alone is published" in done.stderr
    records = json.loads(done.stdout)["records"]
    assert records["video"] == 20 and records["audio"] == 0, records  # 2 s at 10 fps (its `ended` apart)
