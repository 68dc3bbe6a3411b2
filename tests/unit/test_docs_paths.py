"""The README, ARCHITECTURE.md and docs/ name only files and modules that exist.

A name in backquotes that looks like a file of the repository (it has a slash
or a known suffix) must exist in the repository or in the package; a dotted
name whose first part is a part of the package (`live.control`,
`snapshot.readers.ViewReader`, `shadowfs.errors`) must resolve to a module and,
if it goes further, to a name in that module. Paths that only a running
shadowfs makes are listed here, with where they come from.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "shadowfs"
DOCUMENTS = ["README.md", "ARCHITECTURE.md",
             *sorted(str(path.relative_to(ROOT)) for path in (ROOT / "docs").glob("*.md"))]

# Made at run time, not part of the repository: state directory, mounts, media, demo state.
RUNTIME_PATHS = {
    "/dev/fuse", "/var/lib/shadowfs", ".demo/", "mountpoints/snapshots/", "image.json", "state.json",
    "sets.json", "volumes.json", "manifest.jsonl", "blocks.dat", "daemon.sock", "daemon.lock", "COMPLETE",
}
SUFFIXES = (".py", ".md", ".toml", ".sh")
DATA_SUFFIXES = ("json", "jsonl", "xml", "pack", "dat", "sock", "lock", "txt")  # files, not modules
TICKED = re.compile(r"`([^`\s]+)`")
PARTS = {path.stem if path.is_file() else path.name for path in PACKAGE.iterdir()
         if path.suffix == ".py" or (path / "__init__.py").exists()}


def names(document: str) -> list[str]:
    return TICKED.findall((ROOT / document).read_text())


def looks_like_path(name: str) -> bool:
    return "/" in name or name.endswith(SUFFIXES)


def path_exists(name: str) -> bool:
    if name in RUNTIME_PATHS or name.startswith(("<", "/proc/", "/sys/", "/tmp/", "/srv/", "/backup")):
        return True
    if any(char in name for char in "<>*{}$="):  # a pattern, placeholder or option, not one file
        return True
    bare = name.rstrip("/")
    return any((base / bare).exists() for base in (ROOT, PACKAGE, ROOT / "docs", ROOT / "tests"))


def is_module_name(name: str) -> bool:
    """A dotted name starting with a part of the package (not a file name such as manifest.jsonl)."""
    return ("." in name and not looks_like_path(name) and re.fullmatch(r"[A-Za-z_][\w.]*\w", name) is not None
            and (name.split(".")[0] in PARTS or name.startswith("shadowfs."))
            and name.rsplit(".", 1)[-1] not in DATA_SUFFIXES)


def test_the_checks_can_fail() -> None:
    assert not path_exists("live/no_such_module.py") and path_exists("live/ops.py")
    assert is_module_name("live.no_such_module") and not module_name_resolves("live.no_such_module")
    assert not module_name_resolves("snapshot.readers.NoSuchReader")
    assert module_name_resolves("snapshot.readers.ViewReader")


def module_name_resolves(name: str) -> bool:
    dotted = name.removeprefix("shadowfs.")
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = "shadowfs." + ".".join(parts[:cut])
        try:
            found = importlib.import_module(module)
        except ImportError:
            continue
        target: object = found
        for attr in parts[cut:]:
            if not hasattr(target, attr):
                return False
            target = getattr(target, attr)
        return True
    return False


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_file_named_exists(document: str) -> None:
    missing = sorted({name for name in names(document) if looks_like_path(name) and not path_exists(name)})
    assert not missing, f"{document} names files that do not exist: {missing}"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_module_named_exists(document: str) -> None:
    dotted = {name.rstrip("()") for name in names(document) if is_module_name(name.rstrip("()"))}
    missing = sorted(name for name in dotted if not module_name_resolves(name))
    assert not missing, f"{document} names modules or names that do not exist: {missing}"
