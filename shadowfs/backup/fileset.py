"""File sets: which objects of a snapshot belong to which component, which are excluded, and the rest.

One job, pure functions (no file system): given every object of the snapshot
trees (absolute paths in the live namespace, as writers name them) and the
writers' file specs, decide

- for each component, the files it backs up: a spec names files (never
  directories) in its directory ``path`` whose name matches ``filespec``
  (``*`` and ``?`` only; ``*.*`` matches every name, as in VSS), and with
  ``recursive`` the files of every directory below too;
- exclusions always win: a file any writer excludes is backed up by nobody,
  not even as data outside components (vss §10.4);
- a spec with an alternate location is read from there: each file under the
  alternate path that the spec's filespec and recursion select is recorded
  (and restored) at the same relative place under the normal ``path``; the
  alternate copy is not backed up again, and the files at the normal location
  that the spec covers are not read (the writer said they are not usable);
- a file claimed by two components goes to the first (in the order given);
- everything else (directories included) is data outside components,
  backed up crash-consistent from the snapshot.

`spec_covers` is the matching rule; `build_file_sets` applies all of it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from shadowfs.documents import BackupType, FileSpecBackupType, filespec_matches


@dataclass(frozen=True)
class Spec:
    """A file spec as a WMD states it (`documents.FileSpec` and `ExcludedFile` have these fields)."""

    path: str
    filespec: str
    recursive: bool = False
    alternate_path: str = ""
    backup_type_mask: int = int(FileSpecBackupType.ALL_BACKUP_REQUIRED
                                | FileSpecBackupType.ALL_SNAPSHOT_REQUIRED)


@dataclass(frozen=True)
class ComponentFiles:
    """One component's file specs; `key` names it in the results (e.g. ``writer\\logical\\name``)."""

    key: str
    writer: str
    specs: tuple[Spec, ...]


@dataclass(frozen=True)
class Selected:
    """A file a component backs up: recorded at `path`, read from `source`."""

    path: str
    source: str


@dataclass
class FileSets:
    """The result: files per component, the rest, and what exclusions removed."""

    components: dict[str, list[Selected]] = field(default_factory=dict)
    writers: dict[str, str] = field(default_factory=dict)
    outside: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)


def _norm(path: str) -> str:
    return path.rstrip("/") or "/"


def spec_covers(spec_path: str, filespec: str, recursive: bool, file_path: str) -> bool:
    """Whether `file_path` (absolute) is named by a spec of directory `spec_path`."""
    directory, name = posixpath.split(file_path)
    base = _norm(spec_path)
    if directory != base:
        if not recursive:
            return False
        prefix = base if base.endswith("/") else base + "/"
        if not directory.startswith(prefix):
            return False
    return filespec_matches(filespec, name)


def specs_for_type(specs: Iterable[Spec], backup_type: str) -> tuple[Spec, ...]:
    """The specs whose backup-type mask counts for `backup_type` (vss §10.1; copy counts as full)."""
    kind = BackupType(backup_type)
    return tuple(s for s in specs if FileSpecBackupType(s.backup_type_mask).backup_required(kind))


def build_file_sets(objects: Sequence[tuple[str, bool]], components: Sequence[ComponentFiles],
                    excluded: Sequence[Spec]) -> FileSets:
    """Split `objects` ((absolute path, is directory), each path once) as the module docstring says."""
    files = [path for path, is_dir in objects if not is_dir]

    def is_excluded(path: str) -> bool:
        return any(spec_covers(e.path, e.filespec, e.recursive, path) for e in excluded)

    result = FileSets()
    excluded_set = {path for path in files if is_excluded(path)}
    claimed: set[str] = set()      # recorded paths taken by a component
    consumed: set[str] = set()     # alternate copies read for a component
    shadowed: set[str] = set()     # normal-location files replaced by their alternate copy
    for component in components:
        chosen: list[Selected] = []
        result.writers[component.key] = component.writer
        for spec in component.specs:
            if spec.alternate_path:
                alt = _norm(spec.alternate_path)
                base = _norm(spec.path)
                for path in files:
                    if path in shadowed or path in claimed:
                        continue
                    if path not in excluded_set and spec_covers(base, spec.filespec, spec.recursive, path):
                        shadowed.add(path)
                for source in files:
                    if not spec_covers(alt, spec.filespec, spec.recursive, source):
                        continue
                    relative = source[len(alt):].lstrip("/")
                    recorded = posixpath.join(base, relative)
                    if recorded in claimed or source in excluded_set or is_excluded(recorded):
                        continue
                    claimed.add(recorded)
                    consumed.add(source)
                    chosen.append(Selected(recorded, source))
            else:
                for path in files:
                    if path in claimed or path in excluded_set:
                        continue
                    if spec_covers(spec.path, spec.filespec, spec.recursive, path):
                        claimed.add(path)
                        chosen.append(Selected(path, path))
        chosen.sort(key=lambda s: s.path)
        result.components[component.key] = chosen
    result.excluded = sorted(excluded_set)
    taken = claimed | consumed | shadowed | excluded_set
    result.outside = sorted(path for path, _ in objects if path not in taken)
    return result
