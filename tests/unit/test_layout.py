"""The package's layout keeps its promises: data flows one way down the layers, no cycles.

Read from the source (ast), so these hold for every import, also those made
inside a function to keep start-up quick. The layers, lowest first, are the
boxes of the data-flow picture in the package docstring and ARCHITECTURE.md.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "shadowfs"

# Each top-level part of the package and its layer: a part may import its own layer and the ones below.
LAYERS: dict[str, int] = {
    "errors": 0, "manifest": 0, "logsetup": 0,
    "linux": 1,
    "diffarea": 2,
    "capture": 3, "snapshot": 3,
    "statedir": 4, "ipc": 4, "documents": 4, "fuse_adapter": 4,
    "live": 5, "browser": 5, "media": 5,
    "service": 6,
    "daemon": 7, "vss": 7,
    "backup": 8,
    "restore": 9,
    "cli": 10, "__main__": 10,
}
NO_FUSE_NO_TRIO = ("capture", "diffarea", "snapshot", "linux", "media", "documents", "backup", "restore")
MAX_LINES = 700


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: dict[str, Path]) -> Iterator[str]:
    """Every module `path` imports (shadowfs modules resolved to the module, others by top name)."""
    tree = ast.parse(path.read_text(), str(path))
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield candidate if candidate in known else base


def part(module: str) -> str:
    """The top-level part of a shadowfs module: `shadowfs.live.ops` -> `live`."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "shadowfs"


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set()
        for target in imports(path, known):
            if target.startswith("shadowfs") and target != name and not name.startswith(target + "."):
                targets.add(target)
        edges[name] = targets
    return edges


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target in edges and state.get(target) is None:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if state.get(node) is None:
            visit(node)


def test_data_flows_down_the_layers() -> None:
    wrong = []
    for name, targets in graph().items():
        if name == "shadowfs":
            continue
        here = LAYERS.get(part(name))
        assert here is not None, f"{name}: its part {part(name)!r} has no layer in LAYERS"
        for target in targets:
            if target == "shadowfs":
                continue  # the package root holds only the version
            there = LAYERS.get(part(target))
            assert there is not None, f"{target}: no layer"
            if there > here:
                wrong.append(f"{name} (layer {here}) imports {target} (layer {there})")
    assert not wrong, "\n".join(wrong)


def test_the_core_imports_neither_pyfuse3_nor_trio() -> None:
    known = modules()
    wrong = [f"{name} imports {target}" for name, path in known.items() if part(name) in NO_FUSE_NO_TRIO
             for target in imports(path, known) if target.split(".")[0] in ("pyfuse3", "trio")]
    assert not wrong, "\n".join(wrong)


def test_fuse_modules_do_not_touch_lmdb() -> None:
    """A FUSE handler module is a protocol adapter: the diff area is opened and read below it."""
    known = modules()
    wrong = []
    for name, path in known.items():
        targets = set(imports(path, known))
        if "pyfuse3" in targets:
            wrong += [f"{name} imports pyfuse3 and {target}" for target in targets
                      if target.split(".")[0] == "lmdb" or target == "shadowfs.diffarea.area"]
            if ".read()" in path.read_text() or ".write()" in path.read_text():
                wrong.append(f"{name} imports pyfuse3 and opens a transaction")
    assert not wrong, "\n".join(wrong)


def test_only_the_cli_imports_the_cli() -> None:
    wrong = [f"{name} imports {target}" for name, targets in graph().items()
             if part(name) not in ("cli", "__main__")
             for target in targets if part(target) == "cli"]
    assert not wrong, "\n".join(wrong)


def test_modules_are_small_and_say_what_they_do() -> None:
    long = []
    undocumented = []
    for name, path in modules().items():
        text = path.read_text()
        if text.count("\n") > MAX_LINES:
            long.append(f"{name}: {text.count(chr(10))} lines")
        if not ast.get_docstring(ast.parse(text)):
            undocumented.append(name)
    assert not long, f"over {MAX_LINES} lines: " + ", ".join(long)
    assert not undocumented, "no docstring: " + ", ".join(undocumented)


def test_subpackages_and_loose_modules() -> None:
    subpackages = [path.parent.name for path in PACKAGE.glob("*/__init__.py")]
    loose = [path.name for path in PACKAGE.glob("*.py") if path.name not in ("__init__.py", "__main__.py")]
    assert len(subpackages) >= 8, subpackages
    assert len(loose) <= 8, loose


@pytest.mark.parametrize("module", ["shadowfs.live.process", "shadowfs.browser.process"])
def test_child_processes_start_from_their_modules(module: str) -> None:
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"python -m {module}" in result.stdout
