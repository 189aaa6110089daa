"""The package map, checked by walking every import statement of the tree (static, so a lazy import
inside a function counts too).

* ``producer/`` (the producer library) imports nothing of ours but ``common/``;
* ``common/`` imports nothing of ours but ``common/``;
* inside ``workers/`` dependencies point one way: process -> pipeline -> engines;
* ``tools/`` and ``bench/`` are off the serving path: ``producer/``, ``workers/`` and ``common/``
  never import them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("common", "producer", "workers", "cli", "tools", "bench")


def imported_modules(path: Path) -> set[str]:
    """Every module of ours that ``path`` imports, at any depth of the file."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if "." in node.module:  # "from workers import engines" imports workers.engines, not all of workers
                found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in OURS}


def package_imports(package: str) -> dict[str, set[str]]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, package
    return {str(f.relative_to(ROOT)): imported_modules(f) for f in files}


def offenders(package: str, allowed: tuple[str, ...]) -> dict[str, list[str]]:
    out = {}
    for path, modules in package_imports(package).items():
        bad = sorted(m for m in modules if not m.startswith(allowed))
        if bad:
            out[path] = bad
    return out


def test_producer_imports_only_common() -> None:
    assert offenders("producer", ("common", "producer")) == {}


def test_common_imports_only_common() -> None:
    assert offenders("common", ("common",)) == {}


@pytest.mark.parametrize(("room", "allowed"), [
    ("workers/engines", ("common", "workers.engines")),
    ("workers/pipeline", ("common", "workers.engines", "workers.pipeline")),
    ("workers/process", ("common", "workers.engines", "workers.pipeline", "workers.process")),
])
def test_worker_rooms_depend_one_way(room: str, allowed: tuple[str, ...]) -> None:
    assert offenders(room, allowed) == {}


def test_the_walk_sees_lazy_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from workers.pipeline import tasks\n    import bench.naive\n"
                      "    from workers import engines\n")
    assert imported_modules(source) == {"workers.pipeline", "workers.pipeline.tasks", "bench.naive",
                                        "workers.engines"}
