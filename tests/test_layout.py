"""The architecture's rules, checked on the source (docs/architecture.md, "Layout"):

- everything imports through the one namespace, ``fusionstream.<part>``;
- ``stream`` and ``engines`` are libraries that import neither each other nor ``consumers``;
- no import cycle between the project's modules (lazy imports inside functions count too);
- no module over 500 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("stream", "engines", "consumers")
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    modules = {"fusionstream": ROOT / "fusionstream" / "__init__.py"}
    for part in PARTS:
        for path in (ROOT / part).rglob("*.py"):
            dotted = "fusionstream." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[dotted.removesuffix(".__init__")] = path
    return modules


MODULES = _modules()


def _imports(path: Path) -> list[str]:
    """Every module name an import statement in ``path`` names (``from a import b`` gives a and a.b)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


def _graph() -> dict[str, set[str]]:
    return {name: {n for n in _imports(path) if n in MODULES and n != name} for name, path in MODULES.items()}


def test_code_imports_only_through_the_fusionstream_namespace() -> None:
    files = [*MODULES.values(), *(ROOT / "tests").rglob("*.py"), *(ROOT / "scripts").glob("*.py")]
    bare = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in files
        for name in _imports(path)
        if name.split(".")[0] in PARTS
    ]
    assert not bare, "import fusionstream.<part>, not the folder name: " + "; ".join(bare[:10])


def test_stream_and_engines_are_libraries_independent_of_each_other_and_of_the_service() -> None:
    forbidden = {"stream": ("engines", "consumers"), "engines": ("stream", "consumers")}
    crossings = [
        f"{name} imports {target}"
        for name, targets in _graph().items()
        for part, others in forbidden.items()
        if name.startswith(f"fusionstream.{part}")
        for target in targets
        if any(target.startswith(f"fusionstream.{other}") for other in others)
    ]
    assert not crossings, crossings


def test_no_import_cycles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            if component:
                cycles.append(sorted([node, *component]))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_is_over_500_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in [*MODULES.values(), *(ROOT / "tests").rglob("*.py")]
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these modules (one job each): {long}"
