"""The built wheel: one top-level import name, every package and data file inside it, and a
demo that runs from the installed files alone, outside the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("stream", "engines", "consumers")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy, because setuptools leaves build/ and *.egg-info/ in the source tree.
    source = out / "source"
    for name in ("fusionstream", *PARTS):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    # No build isolation: the [dev] extra brings setuptools, so the build needs no download.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (path,) = out.glob("fusionstream-*.whl")
    return path


def test_the_only_top_level_import_name_is_fusionstream(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        declared = [archive.read(n).decode().split() for n in names if n.endswith(".dist-info/top_level.txt")]
    roots = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert roots == {"fusionstream"}
    assert declared in ([], [["fusionstream"]])


def test_every_package_and_data_file_of_the_tree_is_in_the_wheel(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    expected = {"fusionstream/__init__.py", "fusionstream/__main__.py", "fusionstream/py.typed"}  # PEP 561
    for part in PARTS:
        for path in (ROOT / part).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                expected.add(f"fusionstream/{path.relative_to(ROOT).as_posix()}")
    missing = sorted(expected - names)
    assert not missing, f"{len(missing)} files of the tree are not in the wheel, e.g. {missing[:5]}"


def test_demo_runs_from_the_installed_wheel_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed copy comes first on the path; the repository is nowhere on it.
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run(
        [sys.executable, "-c",
         "import importlib.util, fusionstream.stream, fusionstream.engines, fusionstream.consumers;"
         "print(fusionstream.stream.__file__, fusionstream.engines.__file__, fusionstream.consumers.__file__);"
         "print([importlib.util.find_spec(n) is not None for n in ('stream', 'engines', 'consumers')])"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    files, found = probe.stdout.strip().splitlines()
    assert all(Path(f).is_relative_to(site) for f in files.split()), files
    assert found == "[False, False, False]", "the wheel must not install stream, engines or consumers at the top level"

    demo = subprocess.run(
        [sys.executable, "-m", "fusionstream", "demo", "--fast", "--streams", "1", "--seconds", "4", "--json"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert demo.returncode == 0, demo.stderr
    summary = json.loads(demo.stdout.strip().splitlines()[-1])
    assert summary["windows"] >= 6 and summary["missing_windows"] == 0
