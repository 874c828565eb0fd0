"""Settings: defaults < TOML file < environment < flags, validated, secrets hidden, all documented."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError
from pydantic import ValidationError

from fusionstream.consumers.cli_errors import settings_error
from fusionstream.consumers.kafka import delete_topics, ensure_topics
from fusionstream.consumers.settings import Settings, SettingsFileError
from fusionstream.stream.records import Modality

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_precedence_file_then_env_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "fs.toml"
    config.write_text('max_batch = 7\ngroup_id = "from-file"\nhop_ms = 250\n')
    assert Settings.load(config).max_batch == 7
    monkeypatch.setenv("FUSIONSTREAM_MAX_BATCH", "9")
    settings = Settings.load(config)
    assert (settings.max_batch, settings.group_id, settings.hop_ms) == (9, "from-file", 250)
    assert Settings.load(config, max_batch=11, group_id=None).max_batch == 11
    assert Settings.load().hop_ms == 500


def test_an_empty_variable_means_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose files write an unset variable as ``NAME=``: that is the default (or the file's value), not an error."""
    monkeypatch.setenv("FUSIONSTREAM_TEXT_WAIT_MS", "")
    monkeypatch.setenv("FUSIONSTREAM_MAX_BATCH", "")
    assert Settings.load().text_wait_ms == "auto" and Settings.load().max_batch == Settings().max_batch
    config = tmp_path / "fs.toml"
    config.write_text("text_wait_ms = 700\n")
    assert Settings.load(config).text_wait_ms == 700
    monkeypatch.setenv("FUSIONSTREAM_TEXT_WAIT_MS", "500")
    assert Settings.load(config).text_wait_ms == 500


@pytest.mark.parametrize(("value", "expected"), [(" Auto ", "auto"), ("OFF", "off"), ("0", 0), (None, "off")])
def test_the_text_wait_is_a_budget_learned_or_off(value: str | None, expected: object) -> None:
    settings = Settings(text_wait_ms=value)
    assert settings.text_wait_ms == expected
    config = settings.window_config(frames_per_window=8, sample_rate=16_000)
    assert config.learn_wait == (frozenset({Modality.TEXT}) if expected == "auto" else frozenset())
    assert config.wait_ns == (((Modality.TEXT, 0),) if expected == 0 else ())


@pytest.mark.parametrize("value", ["abc", "-5", -5, "1.5"])
def test_a_text_wait_that_is_no_budget_is_one_line(value: object) -> None:
    with pytest.raises(ValidationError, match="text_wait_ms must be") as caught:
        Settings(text_wait_ms=value)
    assert len(caught.value.errors()) == 1


@pytest.mark.parametrize(("value", "said"), [("-5", "at least 0"), (-5, "at least 0"), (1.5, "a whole number"),
                                           (True, "a whole number")])
def test_a_text_wait_says_what_is_wrong_with_it(value: object, said: str) -> None:
    """-5 from the environment read "must be a whole number" (it is one); 1.5 from TOML gave pydantic's union
    internals (``text_wait_ms.int``, ``text_wait_ms.literal['auto','off']``)."""
    with pytest.raises(ValidationError, match=f"text_wait_ms must be {said}") as caught:
        Settings(text_wait_ms=value)
    assert len(caught.value.errors()) == 1


@pytest.mark.parametrize(("field", "value", "message"), [
    ("device", "tpu", "device must be cpu, cuda or cuda:N (a GPU's index), not 'tpu'"),
    ("video_topic", "", "'' is not a Kafka topic name"),
    ("deadletter_topic", "dead letters", "'dead letters' is not a Kafka topic name"),
    ("group_id", " ", "group_id must not be empty"),
    ("predictions_topic", "fs.video", "predictions_topic and video_topic are both 'fs.video': every topic has one job"),
    ("audio_topic", "fs.text", "audio_topic and text_topic are both 'fs.text'"),
])
def test_settings_the_service_cannot_run_with_are_refused_at_load(field: str, value: str, message: str) -> None:
    """A device torch refuses was a 54-line traceback at the first window; a predictions topic that is an input
    topic fed the service its own output; empty names reached the broker."""
    with pytest.raises(ValidationError, match=re.escape(message)):
        Settings(**{field: value})


def test_backend_precision_and_device_are_taken_in_any_case() -> None:
    settings = Settings(backend=" ONNXRuntime", precision="INT8", device="CUDA:1")
    assert (settings.backend, settings.precision, settings.device) == ("onnxruntime", "int8", "cuda:1")


@pytest.mark.parametrize(("value", "expected"), [("3", 3), ("auto", "auto"), (" AUTO ", "auto"), (2, 2)])
def test_workers_is_a_count_or_auto(value: object, expected: object) -> None:
    assert Settings(workers=value).workers == expected


@pytest.mark.parametrize(("value", "message"), [
    ("many", "invalid settings: workers: workers must be a whole number of processes or 'auto', not 'many'"),
    ("0", "invalid settings: workers: workers must be at least 1 or 'auto', not 0"),
    ("-1", "invalid settings: workers: workers must be at least 1 or 'auto', not -1"),  # it is a whole number
])
def test_a_bad_worker_count_is_one_plain_message(value: str, message: str) -> None:
    from pydantic import ValidationError

    from fusionstream.consumers.cli_errors import describe

    with pytest.raises(ValidationError) as caught:
        Settings(workers=value)
    assert describe(caught.value) == message


def test_a_check_of_several_settings_says_where_each_given_one_came_from(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # It used to be the message alone: an operator with settings in three places could not tell which to mend.
    from pydantic import ValidationError

    from fusionstream.consumers.cli_errors import settings_error

    monkeypatch.setenv("FUSIONSTREAM_SASL_MECHANISM", "PLAIN")
    with pytest.raises(ValidationError) as caught:
        Settings.load()
    message = settings_error(caught.value, None, {})
    assert message == ("invalid settings: sasl_mechanism needs sasl_username and sasl_password "
                       "(sasl_mechanism from FUSIONSTREAM_SASL_MECHANISM)")
    config = tmp_path / "fs.toml"
    config.write_text('sasl_username = "svc"\nworkers = 2\n', encoding="utf-8")
    monkeypatch.delenv("FUSIONSTREAM_SASL_MECHANISM")
    monkeypatch.setenv("FUSIONSTREAM_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ValidationError) as caught:
        Settings.load(config, sasl_password="pw")
    assert settings_error(caught.value, config, {"sasl_password": "pw"}).endswith(
        "sasl_username and sasl_password (security_protocol from FUSIONSTREAM_SECURITY_PROTOCOL, "
        f"sasl_username from {config}, sasl_password from the command line)")
    # A setting's name inside a path the message quotes is not taken for the setting.
    for name in ("SECURITY_PROTOCOL", "SASL_MECHANISM"):
        monkeypatch.delenv(f"FUSIONSTREAM_{name}", raising=False)
    cafile = tmp_path / "workers" / "ca.pem"
    monkeypatch.setenv("FUSIONSTREAM_SSL_CAFILE", str(cafile))
    with pytest.raises(ValidationError) as caught:
        Settings.load(config)
    assert settings_error(caught.value, config, {}) == (
        f"invalid settings: ssl_cafile {cafile}: no such file (ssl_cafile from FUSIONSTREAM_SSL_CAFILE)")


@pytest.mark.parametrize(("line", "said"), [
    ("max_batch = true", "max_batch: True is a boolean, where the setting takes an integer"),
    ('exactly_once = "yes"', "exactly_once: 'yes' is a string, where the setting takes a boolean"),
    ("exactly_once = 1", "exactly_once: 1 is an integer, where the setting takes a boolean"),
    ('partitions = "4"', "partitions: '4' is a string, where the setting takes an integer"),
    ("workers = 2.0", "workers: 2.0 is a number, where the setting takes a string or an integer"),
    ('bootstrap_servers = ["a:1"]', "bootstrap_servers: ['a:1'] is a TOML array, where the setting takes a string"),
])
def test_a_toml_value_of_the_wrong_type_is_refused_naming_it(tmp_path: Path, line: str, said: str) -> None:
    """pydantic's lax conversion (which environment variables, all strings, need) took them without a word:
    `max_batch = true` served batches of one."""
    config = tmp_path / "fs.toml"
    config.write_text(line + "\n")
    with pytest.raises(SettingsFileError, match=re.escape(f"settings file {config}: {said}")):
        Settings.load(config)


def test_toml_values_of_the_settings_own_types_are_taken(tmp_path: Path) -> None:
    config = tmp_path / "fs.toml"
    config.write_text('workers = "auto"\ntext_wait_ms = 700\nevict_after_s = 30\nexactly_once = true\n'
                      'model_dir = "/tmp"\nlog_level = "info"\nprecision = "int8"\n')
    settings = Settings.load(config)
    assert (settings.workers, settings.text_wait_ms, settings.evict_after_s, settings.exactly_once) == \
        ("auto", 700, 30.0, True)


def test_a_settings_file_that_is_not_toml_is_refused_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "fs.toml"
    config.write_text("bootstrap_servers = 127.0.0.1:9392\n")
    with pytest.raises(SettingsFileError, match=r"settings file .*fs\.toml is not valid TOML: .*line 1"):
        Settings.load(config)


def test_window_settings_become_the_aligner_config() -> None:
    config = Settings.load(window_ms=2000, hop_ms=1000, lateness_ms=50).window_config(
        frames_per_window=4, sample_rate=16_000
    )
    assert (config.window_ns, config.hop_ns, config.lateness_ns) == (2 * 10**9, 10**9, 50 * 10**6)
    assert config.samples_per_window == 32_000


@pytest.mark.parametrize("flags", [{"window_ms": 1000, "hop_ms": 2000}, {"max_batch": 0}, {"sasl_mechanism": "PLAIN"},
                                   {"backend": "tpu"}, {"no_such_setting": 1}])
def test_bad_settings_are_refused(flags: dict) -> None:
    with pytest.raises(ValidationError):
        Settings.load(**flags)


@pytest.mark.parametrize("servers", ["127.0.0.1:abc", ":9092", "kafka:0", "kafka:70000", "a:1,,b:2"])
def test_a_bootstrap_list_that_is_not_host_port_is_one_plain_message(servers: str) -> None:
    """aiokafka raised a bare ValueError from inside its connect: a 30-145 line traceback from serve and tail."""
    with pytest.raises(ValidationError, match="is not host:port"):
        Settings.load(bootstrap_servers=servers)


@pytest.mark.parametrize("servers", ["localhost:9092", "kafka", "a:1, b:2", "[::1]:9092", "10.0.0.5:19092"])
def test_bootstrap_lists_kafka_takes_are_taken(servers: str) -> None:
    assert Settings.load(bootstrap_servers=servers).bootstrap_servers == servers


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Settings.load(tmp_path / "nope.toml")


def test_secrets_never_show() -> None:
    settings = Settings.load(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="svc",
                             sasl_password="hunter2")
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())
    assert settings.kafka_security()["sasl_plain_password"] == "hunter2"


def test_protocol_and_mechanism_names_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    # Java clients' properties and many compose files write them in lower case; refusing them was a trap.
    monkeypatch.setenv("FUSIONSTREAM_SECURITY_PROTOCOL", "sasl_plaintext")
    monkeypatch.setenv("FUSIONSTREAM_SASL_MECHANISM", " scram-sha-512")
    settings = Settings.load(sasl_username="svc", sasl_password="pw")
    assert (settings.security_protocol, settings.sasl_mechanism) == ("SASL_PLAINTEXT", "SCRAM-SHA-512")
    assert settings.kafka_security()["sasl_mechanism"] == "SCRAM-SHA-512"
    monkeypatch.setenv("FUSIONSTREAM_SECURITY_PROTOCOL", "tls")
    with pytest.raises(ValidationError, match="security_protocol"):
        Settings.load()


def test_every_setting_is_documented() -> None:
    text = DOC.read_text()
    for name, field in Settings.model_fields.items():
        assert f"`{name}`" in text and f"FUSIONSTREAM_{name.upper()}" in text, name
        assert field.description, f"{name} has no description"


def test_topic_administration_authenticates_like_the_clients(kafka_bootstrap: str) -> None:
    # The test broker speaks PLAINTEXT only: a SASL handshake fails at once, which shows the admin
    # client used the credentials instead of connecting without them (and creating the topic).
    topic = f"security-{uuid.uuid4().hex[:8]}"
    sasl = Settings.load(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="svc",
                         sasl_password="hunter2")
    with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
        asyncio.run(ensure_topics(kafka_bootstrap, [topic], 1, security=sasl.kafka_security(), timeout_s=5))
    plain = Settings.load().kafka_security()
    asyncio.run(ensure_topics(kafka_bootstrap, [topic], 1, security=plain, timeout_s=10))
    asyncio.run(delete_topics(kafka_bootstrap, [topic], security=plain))


def _refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(f"FUSIONSTREAM_{name.upper()}", value)
    with pytest.raises(ValidationError) as caught:
        Settings.load()
    return settings_error(caught.value, None, {})


def test_tls_and_sasl_settings_that_cannot_work_are_one_line_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each was a traceback from inside a client's start, or a false "username and password required".
    missing, garbage = tmp_path / "missing.pem", tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    assert _refusal(monkeypatch, ssl_cafile=str(missing)) == (
        f"invalid settings: ssl_cafile {missing}: no such file (ssl_cafile from FUSIONSTREAM_SSL_CAFILE)")
    assert _refusal(monkeypatch, ssl_cafile=str(garbage)).startswith(
        f"invalid settings: ssl_cafile {garbage}: not certificates in PEM")
    monkeypatch.delenv("FUSIONSTREAM_SSL_CAFILE")
    assert _refusal(monkeypatch, security_protocol="SASL_SSL", sasl_username="u", sasl_password="p") == (
        "invalid settings: security_protocol SASL_SSL needs sasl_mechanism (PLAIN, SCRAM-SHA-256 or "
        "SCRAM-SHA-512), sasl_username and sasl_password (security_protocol from FUSIONSTREAM_SECURITY_PROTOCOL, "
        "sasl_username from FUSIONSTREAM_SASL_USERNAME, sasl_password from FUSIONSTREAM_SASL_PASSWORD)")
    for name in ("SECURITY_PROTOCOL", "SASL_USERNAME", "SASL_PASSWORD"):
        monkeypatch.delenv(f"FUSIONSTREAM_{name}")
    assert "ssl_keyfile needs ssl_certfile" in _refusal(monkeypatch, ssl_keyfile=str(garbage))
    monkeypatch.delenv("FUSIONSTREAM_SSL_KEYFILE")
    assert _refusal(monkeypatch, ssl_certfile=str(garbage)).startswith(
        f"invalid settings: ssl_certfile {garbage}: not a certificate and its key in PEM")


def test_a_client_certificate_goes_into_the_tls_context(tmp_path: Path) -> None:
    """Mutual TLS (a broker with ssl.client.auth=required): the certificate and key are this client's."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=client",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    settings = Settings.load(security_protocol="SSL", ssl_cafile=cert, ssl_certfile=cert, ssl_keyfile=key)
    context = settings.kafka_security()["ssl_context"]
    assert context.get_ca_certs()[0]["subject"] == ((("commonName", "client"),),)
    # The chain is this side's (no public getter for it): a key that is not the certificate's is refused.
    other_key = tmp_path / "other.key"
    subprocess.run(["openssl", "genrsa", "-out", str(other_key), "2048"], check=True, capture_output=True, timeout=60)
    with pytest.raises(ValidationError, match="ssl_certfile"):
        Settings.load(security_protocol="SSL", ssl_certfile=cert, ssl_keyfile=other_key)


def test_logs_and_banners_say_the_backend_as_chosen() -> None:
    from fusionstream.consumers.engine import engine_title

    assert engine_title(Settings.load()) == "onnxruntime fp32"
    assert engine_title(Settings.load(backend="tensorrt")) == "tensorrt fp16"
    assert engine_title(Settings.load(precision="int8")) == "onnxruntime int8"
    assert engine_title(Settings.load(backend="torch", device="cuda", precision="fp16")) == "torch cuda fp16"
