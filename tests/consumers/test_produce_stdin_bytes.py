"""``produce captions -`` on what a live feed really pipes in: bytes that are not UTF-8 ended the producer with
"'utf-8' codec can't encode characters …: surrogates not allowed" (every later line lost), a megabyte line
ended it at Kafka's record limit, and a C or Latin-1 locale read UTF-8 as mojibake."""

from __future__ import annotations

import subprocess

from test_produce import DEADLINE_S, FUSIONSTREAM, REPO_ROOT, _env, _topics, read_topics

from fusionstream.consumers.producers.sources import MAX_CAPTION_LINE_BYTES
from fusionstream.stream.media import decode_media
from fusionstream.stream.records import Modality
from fusionstream.stream.wire import decode


def test_kafka_a_line_that_is_not_utf8_is_skipped_one_too_long_cut_and_the_rest_sent_whatever_the_locale(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    long_line = "ü" * MAX_CAPTION_LINE_BYTES  # two bytes each: twice the limit
    feed = "東京 Grüße\n".encode() + b"bad \xff\xfe line\n" + f"{long_line}\nשלום\n".encode()
    env = {**_env(kafka_bootstrap, topic_prefix), "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    done = subprocess.run([*FUSIONSTREAM, "produce", "captions", "-", "--stream-id", "desk", "-q"], env=env,
                          cwd=REPO_ROOT, input=feed, capture_output=True, timeout=DEADLINE_S, check=False)
    stderr = done.stderr.decode("utf-8", "backslashreplace")
    assert done.returncode == 0, stderr
    assert "stdin line 2 is not valid UTF-8 (bytes ff fe at character 4): skipped" in stderr, stderr
    assert f"stdin line 3 has {2 * MAX_CAPTION_LINE_BYTES} bytes: sent its first {MAX_CAPTION_LINE_BYTES}" in stderr
    received = read_topics(kafka_bootstrap, _topics(topic_prefix))
    texts = [decode_media(decode(m.value)).text for m in received[Modality.TEXT]  # type: ignore[union-attr]
             if not decode(m.value).is_progress]
    assert texts == ["東京 Grüße", "ü" * (MAX_CAPTION_LINE_BYTES // 2), "שלום"]
