"""A broker certificate refused for a reason the CA file does not cause (an outside operator's finding: an
expired certificate and a host name mismatch both said "check FUSIONSTREAM_SSL_CAFILE", with the CA file right)."""

from __future__ import annotations

import ssl

import pytest

from fusionstream.consumers.kafka.readiness import _certificate_hint


def _refused(verify_message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {verify_message}")
    error.verify_message = verify_message
    return error


@pytest.mark.parametrize(("why", "hint"), [
    ("certificate has expired", "renew it"),
    ("certificate is not yet valid", "validity dates"),
    ("IP address mismatch, certificate is not valid for '127.0.0.1'.", "does not name the host"),
    ("Hostname mismatch, certificate is not valid for 'kafka.local'.", "FUSIONSTREAM_BOOTSTRAP_SERVERS"),
    ("unable to get local issuer certificate", "check FUSIONSTREAM_SSL_CAFILE"),
    ("self-signed certificate in certificate chain", "check FUSIONSTREAM_SSL_CAFILE"),
])
def test_the_hint_follows_the_reason(why: str, hint: str) -> None:
    said = _certificate_hint(_refused(why))
    assert hint in said
    assert ("SSL_CAFILE" in said) == (hint == "check FUSIONSTREAM_SSL_CAFILE")


def test_kafka_a_protocol_not_the_listeners_is_named(kafka_bootstrap: str) -> None:
    # TLS to a plaintext listener said only "cannot reach Kafka … start a local one with make kafka-start".
    import os
    import subprocess
    import sys

    env = {**os.environ, "FUSIONSTREAM_SECURITY_PROTOCOL": "SSL"}
    done = subprocess.run([sys.executable, "-m", "fusionstream", "topics", "describe", "--bootstrap", kafka_bootstrap],
                          capture_output=True, text=True, timeout=120, check=False, env=env)
    assert done.returncode == 1
    said = " ".join(done.stderr.split())
    assert "this client speaks SSL: if the listener at that port is another protocol, set " \
           "FUSIONSTREAM_SECURITY_PROTOCOL" in said, said
