"""The deployment files (docker/, .dockerignore) checked without Docker.

No image is built here. What can rot silently is checked instead: the compose files parse and
point at files that exist, every FUSIONSTREAM_* variable they set is a real setting with a valid
value, the Grafana dashboard only queries metrics the service exports (and shows all of them),
and Prometheus scrapes the port the service listens on. ``docker-compose config`` runs too when
the binary is installed.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import typer
import yaml
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from fusionstream.consumers.cli import app
from fusionstream.consumers.service.metrics import ServiceMetrics
from fusionstream.consumers.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_GPU = DOCKER / "compose.gpu.yaml"
COMPOSE_FILES = (COMPOSE, COMPOSE_GPU)
DOCKERFILES = (DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu")
DASHBOARD = DOCKER / "grafana" / "dashboards" / "fusionstream.json"
DATASOURCES = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
PROMETHEUS = DOCKER / "prometheus.yml"
ENV_PREFIX = "FUSIONSTREAM_"


def _load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def _services(path: Path) -> dict[str, dict[str, Any]]:
    services = _load_yaml(path).get("services")
    assert isinstance(services, dict) and services, f"{path} has no services"
    return services


def _interpolate(value: object) -> str:
    """A compose value with ``${VAR:-default}`` replaced by its default: what a plain `up` uses."""
    text = str(value)
    text = re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", text)
    return text.replace("$$", "$")


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the `- NAME=value` form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): _interpolate(v) for k, v in env.items()}


def _setting_env_names() -> set[str]:
    return {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}


def _cli_env_names() -> set[str]:
    """Environment variables the CLI reads outside Settings (e.g. FUSIONSTREAM_INSTANCE_ID of `serve`)."""
    names: set[str] = set()

    def walk(command: click.Command) -> None:
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            names.update([envvar] if isinstance(envvar, str) else envvar or [])
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                walk(sub)

    walk(typer.main.get_command(app))
    return names


def _dockerfile_env(path: Path) -> dict[str, str]:
    """``ENV`` assignments of a Dockerfile (the ``KEY=value`` form, continuation lines joined)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip().upper().startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


# -- compose ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_parses(path: Path) -> None:
    services = _services(path)
    for name, service in services.items():
        assert isinstance(service, dict), f"{path.name}: service {name} is not a mapping"
    if path == COMPOSE:
        assert {"kafka", "serve", "producer", "prometheus", "grafana"} <= set(services)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_services_reference_existing_files(path: Path) -> None:
    data = _load_yaml(path)
    # An override file is merged over compose.yaml: volumes declared in either are declared.
    declared_volumes = set(_load_yaml(COMPOSE).get("volumes") or {}) | set(data.get("volumes") or {})
    for name, service in _services(path).items():
        build = service.get("build")
        if build is not None:
            build = {"context": build} if isinstance(build, str) else build
            context = (path.parent / build.get("context", ".")).resolve()
            assert context.is_dir(), f"{path.name}: {name}'s build context {context} does not exist"
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{path.name}: {name}'s Dockerfile {dockerfile} does not exist"
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                assert (path.parent / source).exists(), f"{path.name}: {name} mounts {source}, which does not exist"
            elif source:
                assert source in declared_volumes, f"{path.name}: {name} uses undeclared volume {source}"
        for env_file in [service["env_file"]] if isinstance(service.get("env_file"), str) else service.get(
            "env_file", []
        ):
            assert (path.parent / env_file).is_file(), f"{path.name}: {name}'s env_file {env_file} does not exist"
    assert "version" not in data, "the Compose Specification has no `version:` key"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_fusionstream_variables_are_settings(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    known = _setting_env_names() | _cli_env_names()
    settings_env = _setting_env_names()
    checked = 0
    for name, service in _services(path).items():
        env = _environment(service)
        unknown = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in known)
        assert not unknown, f"{path.name}: service {name} sets {unknown}, which consumers/settings.py does not read"
        # The values must validate too: a typo in a value would only show when the container starts.
        for key in list(os.environ):
            if key.startswith(ENV_PREFIX):
                monkeypatch.delenv(key)
        for key, value in env.items():
            if key in settings_env:
                monkeypatch.setenv(key, value)
                checked += 1
        _check_settings(f"{path.name}: service {name}")
    if path == COMPOSE:
        assert checked, "compose.yaml sets no FUSIONSTREAM_* variable"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_fusionstream_variables_are_settings(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in _dockerfile_env(path).items() if k.startswith(ENV_PREFIX)}
    unknown = sorted(set(env) - _setting_env_names())
    assert not unknown, f"{path.name} sets {unknown}, which consumers/settings.py does not read"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    _check_settings(path.name)


def _check_settings(where: str) -> None:
    try:
        Settings.load()
    except ValidationError as exc:
        pytest.fail(f"{where}: FUSIONSTREAM_* values the settings refuse:\n{exc}")


def test_kafka_service_is_a_kraft_single_node_the_clients_reach() -> None:
    services = _services(COMPOSE)
    kafka = _environment(services["kafka"])
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = kafka["KAFKA_NODE_ID"]
    voters = kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert len(voters) == 1 and voters[0].startswith(f"{node_id}@"), "the only voter must be this node"
    controller = kafka["KAFKA_CONTROLLER_LISTENER_NAMES"]
    voter_port = voters[0].rsplit(":", 1)[1]
    assert f"{controller}://0.0.0.0:{voter_port}" in kafka["KAFKA_LISTENERS"].split(",")
    protocols = dict(item.split(":") for item in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = {item.split("://")[0] for item in kafka["KAFKA_LISTENERS"].split(",")}
    assert listeners <= set(protocols), "every listener needs a security protocol"
    assert controller not in kafka["KAFKA_ADVERTISED_LISTENERS"], "controllers are not advertised to clients"
    # Every fusionstream container's bootstrap address is one the broker advertises.
    advertised = {item.split("://")[1] for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    for name, service in services.items():
        bootstrap = _environment(service).get(f"{ENV_PREFIX}BOOTSTRAP_SERVERS")
        if bootstrap is not None:
            assert set(bootstrap.split(",")) <= advertised, f"{name} bootstraps from {bootstrap}, not advertised"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_files_that_reach_the_build_context(path: Path) -> None:
    """Every ``COPY`` source exists and is not excluded by .dockerignore (the build context is the repo root)."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    text = re.sub(r"\\\n", " ", path.read_text())
    sources = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].upper() != "COPY" or any(w.startswith("--from") for w in words):
            continue
        sources += [w for w in words[1:-1] if not w.startswith("--")]
    assert sources, f"{path.name} copies nothing"
    for source in sources:
        assert (ROOT / source).exists(), f"{path.name} copies {source}, which does not exist"
        assert _in_build_context(source, patterns), f"{path.name} copies {source}, but .dockerignore excludes it"


def _in_build_context(path: str, patterns: list[str]) -> bool:
    """Docker's rule, for the simple patterns we use: the last matching pattern wins, ``!`` re-includes."""
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = [path, *(str(parent) for parent in Path(path).parents if str(parent) != ".")]
        if any(fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.removeprefix("**/")) for c in candidates):
            included = negate
    return included


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.mark.parametrize("files", [(COMPOSE,), COMPOSE_FILES], ids=["cpu", "gpu"])
def test_docker_compose_config_accepts_the_files(files: tuple[Path, ...]) -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed; the YAML checks still ran")
    args = [*command, *(arg for f in files for arg in ("-f", str(f))), "config", "-q"]
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr


# -- Prometheus ---------------------------------------------------------------------------------


def test_prometheus_scrapes_the_service_metrics_port() -> None:
    config = _load_yaml(PROMETHEUS)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["fusionstream"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets: list[tuple[str, int]] = []
    for sd in job.get("dns_sd_configs", []):
        targets += [(name, int(sd["port"])) for name in sd["names"]]
    for static in job.get("static_configs", []):
        targets += [(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in static["targets"]]
    assert targets, "the fusionstream job has no targets"

    services = _services(COMPOSE)
    default_port = Settings.model_fields["metrics_port"].default
    for host, port in targets:
        assert host in services, f"prometheus scrapes {host}, which is not a compose service"
        configured = _environment(services[host]).get(f"{ENV_PREFIX}METRICS_PORT", default_port)
        assert port == int(configured), f"prometheus scrapes {host}:{port}, the service listens on {configured}"
        assert str(port) in [str(p).split(":")[-1] for p in services[host].get("expose", [])]
    for dockerfile in DOCKERFILES:
        env_port = _dockerfile_env(dockerfile).get(f"{ENV_PREFIX}METRICS_PORT")
        assert env_port == str(default_port), f"{dockerfile.name} sets the metrics port to {env_port}"
        assert re.search(rf"^EXPOSE\s+{default_port}\b", dockerfile.read_text(), re.M)


# -- Grafana ------------------------------------------------------------------------------------

_PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                    "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, labels, keywords or variables)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\boffset\s+-?\w+", "", expr)  # offset modifiers (`offset 1d`)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # dashboard variables
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end():].lstrip().startswith("(") or match.group().lower() in _PROMQL_KEYWORDS:
            continue  # a function or an operator
        names.add(match.group())
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('histogram_quantile(0.95, sum by (le) (rate(a_bucket{instance=~"$instance"}[$__rate_interval])))',
         {"a_bucket"}),
        ("sum(rate(a_sum[5m])) / sum(rate(a_count[5m]))", {"a_sum", "a_count"}),
        ('max by (instance) (b{x="by (y)"}) > bool 0', {"b"}),
        ("count(c) or vector(0)", {"c"}),
        ("rate(d_count[1d] offset 1d) > 0", {"d_count"}),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


def _exported_names() -> dict[str, set[str]]:
    """Per metric family of a fresh service registry, the sample names Prometheus stores."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "gauge": ("",), "summary": ("", "_sum", "_count", "_created")}
    registry = CollectorRegistry()
    ServiceMetrics(registry)
    # Labelled metrics without children export no samples yet, so names come from the family type.
    names = {family.name: {family.name + s for s in suffixes[family.type]} for family in registry.collect()}
    # A `serve --workers N` host adds its supervisor's own (worker restarts, workers up).
    from fusionstream.consumers.service.supervisor import Supervisor

    host = CollectorRegistry()
    Supervisor(Settings(), workers=1, registry=host)
    for family in host.collect():
        if family.name.startswith("fusionstream_worker"):
            names[family.name] = {family.name + s for s in suffixes[family.type]}
    assert {"fusionstream_worker_restarts", "fusionstream_worker_up"} <= set(names)
    return names


def _dashboard_queries() -> Iterator[tuple[str, str]]:
    """(where, expression) for every PromQL query of the dashboard, panels and variables."""
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", query)
            yield f"variable {variable['name']!r}", match.group(1) if match else query


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows hold their panels


def test_dashboard_queries_only_exported_metrics() -> None:
    exported = set().union(*_exported_names().values())
    used = 0
    for where, expr in _dashboard_queries():
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - exported
        assert not unknown, f"{where} queries {sorted(unknown)}, which consumers/service/metrics.py does not export"
        used += 1
    assert used >= 20


def test_dashboard_shows_every_metric() -> None:
    """A metric added to the service without a panel fails here: add it to the dashboard."""
    used = set().union(*(promql_metric_names(expr) for _, expr in _dashboard_queries()))
    missing = sorted(family for family, names in _exported_names().items() if not names & used)
    assert not missing, f"no dashboard panel shows {missing}"


def test_dashboard_uses_the_provisioned_datasource() -> None:
    uids = {source["uid"] for source in _load_yaml(DATASOURCES)["datasources"]}
    dashboard = json.loads(DASHBOARD.read_text())
    ids = set()
    for panel in _panels(dashboard["panels"]):
        assert panel["id"] not in ids, f"panel id {panel['id']} is used twice"
        ids.add(panel["id"])
        for target in [panel, *panel.get("targets", [])]:
            source = target.get("datasource")
            if source is not None:
                assert source["uid"] in uids, f"panel {panel['title']!r} uses datasource {source['uid']}"
    provider = _load_yaml(DOCKER / "grafana" / "provisioning" / "dashboards" / "fusionstream.yaml")
    mounts = _services(COMPOSE)["grafana"]["volumes"]
    path = provider["providers"][0]["options"]["path"]
    assert any(m.endswith(f":{path}:ro") and "grafana/dashboards" in m for m in mounts)


def test_the_alerts_operations_md_suggests_query_exported_metrics() -> None:
    """Every PromQL expression of operations.md's alert table names metrics (and the coverage bucket label)
    that the service or a `--workers` host exports: an operator copies them as they are."""
    text = (ROOT / "docs" / "operations.md").read_text()
    table = text[text.index("Alerts worth having"):text.index("## Sizing")]
    exprs = [e for e in re.findall(r"`([^`]+)`", table) if "fusionstream_" in e]
    assert len(exprs) >= 8
    exported = set().union(*_exported_names().values())
    for expr in exprs:
        unknown = promql_metric_names(expr) - exported - {"N"}  # N: the operator's own number of processes
        assert not unknown, f"operations.md's alert {expr!r} queries {sorted(unknown)}, which nothing exports"
        for bucket in re.findall(r'le="([^"]+)"', expr):
            # prometheus_client writes bucket bounds as Go floats: "0.0", "2.5", "+Inf".
            assert bucket in {"0.0", "+Inf"} or "." in bucket, f"bucket label {bucket!r} in {expr!r}"
