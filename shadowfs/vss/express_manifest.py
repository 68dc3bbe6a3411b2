"""Express writer manifests: a writer declared in a TOML file, read and checked (VSS express writers).

```
 manifest.toml ──tomllib──▶ tables checked key by key ──▶ ExpressManifest
                                    ├─ identity (class id, instance id: uuid5 of the name)
                                    ├─ metadata: the whole Writer Metadata Document
                                    └─ commands: one shell command per event, with its timeout
```

One job: turn a manifest into everything an express writer needs before it
connects (`vss.express_writer` runs it): its identity, the Writer Metadata
Document it answers Identify with (components, file specs, exclusions,
dependencies, restore method, backup schema: all of vss §6), and its event
commands. The format, key by key, is in docs/vss.md §16.

Invariants:
- A manifest is checked whole when it is loaded: every table and key is known,
  every value has its type and range, the WMD passes `validate()`; the first
  problem is a `ManifestError` naming the file, the key (`component[2].file[1].path`)
  and what is wrong. Nothing is half-read: a writer whose manifest loads runs
  with all of it.
- Ids are stable: without `class_id` the class id is uuid5 of the writer's name
  in a fixed namespace, and without `instance_id` the instance id is uuid5 of
  the instance name under the class id (as `vss.writer.Writer` derives it), so
  a restarted writer is the same writer to the daemon and to saved documents.
- No I/O but reading the file (and looking up `events.user` in the password
  database); importing this module imports neither trio nor the writer library.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import operator
import os
import pwd
import tomllib
import uuid
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any, TypeVar

from shadowfs.documents import (
    BackupSchema,
    ComponentType,
    DocumentError,
    FileSpecBackupType,
    RestoreMethodType,
    SourceType,
    UsageType,
    WriterMetadata,
    WriterRestoreCondition,
)
from shadowfs.documents.enums import BACKUP_SCHEMA_XML_NAMES, DEFAULT_FILESPEC_BACKUP_TYPE
from shadowfs.documents.rules import (
    check_component_name,
    check_filespec,
    check_logical_path,
    check_optional_path,
    check_path,
    check_text,
)
from shadowfs.errors import ManifestError
from shadowfs.service import protocol
from shadowfs.service.protocol import Event

# the namespace of generated class ids: uuid5(EXPRESS_NAMESPACE, writer name)
EXPRESS_NAMESPACE = uuid.UUID("5d0c8f5e-3a7b-4f61-9b0e-7e2d4c1a9f30")
DEFAULT_TIMEOUT = 60.0
RETRYABLE_EXIT = 75                     # EX_TEMPFAIL (sysexits.h): "try again later"
MAX_COMMAND = 64 * 1024
MAX_MANIFEST = 1 << 20
SHIPPED = "manifests"                   # package data of shadowfs.vss: the manifests shadowfs ships
EVENTS = tuple(Event)                   # every event may have a command, in the order of vss §2 and §3
EVENT_NAMES = tuple(event.value for event in EVENTS)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class EventCommand:
    """The shell command run for one event, and how long it may take."""

    event: Event
    command: str
    timeout: float


@dataclasses.dataclass(frozen=True)
class ExpressManifest:
    """A checked manifest: identity, the WMD to answer Identify with, and the event commands."""

    path: str
    name: str
    class_id: str
    instance_name: str
    instance_id: str
    usage: UsageType
    data_source: SourceType
    freeze_timeout: float
    user: str | None
    retryable_exit_codes: frozenset[int]
    commands: dict[Event, EventCommand]
    template: WriterMetadata

    def metadata(self) -> WriterMetadata:
        """A fresh copy of the Writer Metadata Document the manifest declares."""
        return copy.deepcopy(self.template)

    def summary(self) -> dict[str, Any]:
        """What `shadowfs writer run --check --json` prints: identity, events and the WMD."""
        return {"manifest": self.path, "writer_name": self.name, "class_id": self.class_id,
                "instance_name": self.instance_name, "instance_id": self.instance_id,
                "freeze_timeout": self.freeze_timeout, "user": self.user,
                "retryable_exit_codes": sorted(self.retryable_exit_codes),
                "events": {c.event.value: {"command": c.command, "timeout": c.timeout}
                           for c in self.commands.values()},
                "metadata": self.template.to_dict()}


# ---- reading tables key by key ------------------------------------------------------------------------


class _Table:
    """One TOML table of the manifest: its keys are taken one by one, and `done` refuses the rest."""

    def __init__(self, source: str, where: str, data: Any) -> None:
        self.source = source
        self.where = where
        if not isinstance(data, dict):
            raise self.error(where, f"must be a table, not {_kind(data)}")
        self.data: dict[str, Any] = data
        self.taken: set[str] = set()

    def error(self, key: str, problem: str) -> ManifestError:
        return ManifestError(f"writer manifest {self.source}: {key}: {problem}")

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str, convert: Callable[[Any], T], default: T) -> T:
        """The value of an optional key, converted and checked; `default` when it is absent."""
        if name not in self.data:
            self.taken.add(name)
            return default
        return self.need(name, convert)

    def need(self, name: str, convert: Callable[[Any], T]) -> T:
        """The value of a required key, converted and checked."""
        self.taken.add(name)
        if name not in self.data:
            raise self.error(self.where or "the file", f"the key {name!r} is required")
        try:
            return convert(self.data[name])
        except (DocumentError, ValueError, TypeError) as exc:
            raise self.error(self.key(name), str(exc)) from None

    def table(self, name: str) -> _Table:
        self.taken.add(name)
        return _Table(self.source, self.key(name), self.data.get(name, {}))

    def tables(self, name: str) -> Iterator[_Table]:
        """An array of tables (`[[name]]`), each with its place: `name[1]`, `name[2]`, ..."""
        self.taken.add(name)
        items = self.data.get(name, [])
        if not isinstance(items, list):
            raise self.error(self.key(name), f"must be an array of tables ([[{name}]]), not {_kind(items)}")
        for index, item in enumerate(items, 1):
            yield _Table(self.source, f"{self.key(name)}[{index}]", item)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.taken)
        if unknown:
            known = ", ".join(sorted(self.taken))
            raise self.error(self.key(unknown[0]), f"unknown key (known here: {known})")


def _kind(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array",
             dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"must be a string, not {_kind(value)}")
    check_text(value)
    return value


def _nonempty(value: Any) -> str:
    text = _text(value)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"must be true or false, not {_kind(value)}")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"must be a number of seconds, not {_kind(value)}")
    if not protocol.MIN_TIMEOUT <= value <= protocol.MAX_TIMEOUT:
        raise ValueError(f"must lie between {protocol.MIN_TIMEOUT:g} and {protocol.MAX_TIMEOUT:g} seconds, "
                         f"not {value:g}")
    return float(value)


def _uuid(value: Any) -> str:
    try:
        return str(uuid.UUID(_text(value)))
    except ValueError:
        raise ValueError(f"must be a UUID such as {uuid.UUID(int=0x1234)}, not {value!r}") from None


def _checked(check: Callable[[str], object]) -> Callable[[Any], str]:
    """A parser of a text value that the Writer Metadata rule `check` accepts (else ValueError)."""
    def parse(value: Any) -> str:
        text = _text(value)
        check(text)
        return text
    return parse


_path = _checked(check_path)
_optional_path = _checked(check_optional_path)
_filespec = _checked(check_filespec)
_logical_path = _checked(check_logical_path)
_component_name = _checked(check_component_name)


def _choice(kind: Any) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        try:
            return kind(_text(value))
        except ValueError:
            allowed = ", ".join(repr(member.value) for member in kind)
            raise ValueError(f"must be one of {allowed}, not {value!r}") from None
    return convert


def _flags(kind: Any, names: dict[str, Any]) -> Callable[[Any], Any]:
    """An integer mask, or an array of the names of its bits."""
    def convert(value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            every = functools.reduce(operator.or_, (int(member) for member in names.values()), 0)
            if value < 0 or value & ~every:
                raise ValueError(f"{value:#x} has bits that mean nothing here")
            return kind(value)
        if not isinstance(value, list):
            raise TypeError(f"must be an integer or an array of names, not {_kind(value)}")
        mask = kind(0)
        for item in value:
            if not isinstance(item, str) or item not in names:
                raise ValueError(f"{item!r} is not one of {', '.join(names)}")
            mask |= names[item]
        return mask
    return convert


_SCHEMA_NAMES = {name: bit for bit, name in BACKUP_SCHEMA_XML_NAMES.items()}
_MASK_NAMES = {name: member for name, member in FileSpecBackupType.__members__.items() if member}


def _exit_codes(value: Any) -> frozenset[int]:
    if not isinstance(value, list):
        raise TypeError(f"must be an array of exit codes, not {_kind(value)}")
    for code in value:
        if isinstance(code, bool) or not isinstance(code, int) or not 1 <= code <= 255:
            raise ValueError(f"{code!r} is not an exit code from 1 to 255")
    return frozenset(value)


def _user(value: Any) -> str:
    name = _nonempty(value)
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"there is no user {name!r} on this machine") from None
    return name


# ---- the manifest --------------------------------------------------------------------------------------


def load(path: str) -> ExpressManifest:
    """Read and check the manifest at `path`; `ManifestError` names the first problem."""
    source = os.path.abspath(path)
    try:
        with open(source, "rb") as f:
            raw = f.read(MAX_MANIFEST + 1)
    except OSError as exc:
        raise ManifestError(f"writer manifest {source}: cannot read it: {exc.strerror or exc}") from None
    if len(raw) > MAX_MANIFEST:
        raise ManifestError(f"writer manifest {source}: larger than {MAX_MANIFEST} bytes")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ManifestError(f"writer manifest {source}: not UTF-8 text ({exc.reason} at byte {exc.start})"
                            ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"writer manifest {source}: not valid TOML: {exc}") from None
    return parse(data, source)


def parse(data: dict[str, Any], source: str) -> ExpressManifest:
    """Check a manifest already read into `data`; `source` names it in errors."""
    top = _Table(source, "", data)
    if "writer" not in data:
        raise top.error("writer", "the table [writer] is required (at least its name)")
    writer = top.table("writer")
    name = writer.need("name", _nonempty)
    class_id = writer.get("class_id", _uuid, str(uuid.uuid5(EXPRESS_NAMESPACE, name)))
    instance_name = writer.get("instance_name", _text, "")
    instance_id = writer.get("instance_id", _uuid, str(uuid.uuid5(uuid.UUID(class_id), instance_name)))
    usage = writer.get("usage", _choice(UsageType), UsageType.USER_DATA)
    data_source = writer.get("data_source", _choice(SourceType), SourceType.OTHER)
    freeze_timeout = writer.get("freeze_timeout", _seconds, protocol.DEFAULT_FREEZE_TIMEOUT)
    schema = writer.get("backup_schema", _flags(BackupSchema, _SCHEMA_NAMES), BackupSchema.UNDEFINED)
    writer.done()
    try:
        wmd = WriterMetadata.create(class_id, instance_id, name, instance_name=instance_name, usage=usage,
                                    data_source=data_source)
    except DocumentError as exc:
        raise writer.error("writer", str(exc)) from None
    wmd.set_backup_schema(schema)
    for component in top.tables("component"):
        _component(component, wmd)
    for exclude in top.tables("exclude"):
        _document_call(exclude, lambda t: wmd.add_exclude_files(
            t.need("path", _path), t.need("spec", _filespec), t.get("recursive", _flag, False)))
    _restore_method(top.table("restore_method"), wmd)
    events = top.table("events")
    user, codes, commands = _events(events)
    top.done()
    try:
        wmd.validate()
    except DocumentError as exc:
        raise top.error("the file", f"the writer metadata it declares is not valid: {exc}") from None
    return ExpressManifest(path=source, name=name, class_id=class_id, instance_name=instance_name,
                           instance_id=instance_id, usage=usage, data_source=data_source,
                           freeze_timeout=freeze_timeout, user=user, retryable_exit_codes=codes,
                           commands=commands, template=wmd)


def _document_call(table: _Table, call: Callable[[_Table], object]) -> None:
    """Run one builder call of the WMD with `table`'s keys; its DocumentError names the table."""
    try:
        call(table)
    except DocumentError as exc:
        raise table.error(table.where, str(exc)) from None
    table.done()


def _component(table: _Table, wmd: WriterMetadata) -> None:
    name = table.need("name", _component_name)
    logical_path = table.get("logical_path", _logical_path, "")
    ctype = table.get("type", _choice(ComponentType), ComponentType.FILEGROUP)
    try:
        wmd.add_component(ctype, logical_path, name, caption=table.get("caption", _text, ""),
                          restore_metadata=table.get("restore_metadata", _flag, False),
                          notify_on_backup_complete=table.get("notify_on_backup_complete", _flag, False),
                          selectable_for_backup=table.get("selectable", _flag, True),
                          selectable_for_restore=table.get("selectable_for_restore", _flag, True))
    except DocumentError as exc:
        raise table.error(table.where, str(exc)) from None
    for spec in table.tables("file"):
        _file_spec(spec, wmd, ctype, logical_path, name, log=False)
    logs = list(table.tables("log_file"))
    if logs and ctype is not ComponentType.DATABASE:
        raise table.error(logs[0].where, "log files belong to database components (type = \"database\")")
    for spec in logs:
        _file_spec(spec, wmd, ctype, logical_path, name, log=True)
    for dependency in table.tables("dependency"):
        _document_call(dependency, lambda t: wmd.add_component_dependency(
            logical_path, name, t.get("writer_id", _uuid, str(wmd.identity.writer_id)),
            t.get("logical_path", _logical_path, ""), t.need("name", _component_name)))
    table.done()


def _file_spec(table: _Table, wmd: WriterMetadata, ctype: ComponentType, logical_path: str, name: str,
               *, log: bool) -> None:
    path = table.need("path", _path)
    spec = table.need("spec", _filespec)
    recursive = table.get("recursive", _flag, False)
    alternate = table.get("alternate_path", _optional_path, "")
    mask = table.get("backup_type_mask", _flags(FileSpecBackupType, _MASK_NAMES),
                     DEFAULT_FILESPEC_BACKUP_TYPE)

    def add(_: _Table) -> object:
        if ctype is ComponentType.FILEGROUP:
            return wmd.add_files(logical_path, name, path, spec, recursive=recursive,
                                 alternate_path=alternate, backup_type_mask=mask)
        adder = wmd.add_database_log_files if log else wmd.add_database_files
        return adder(logical_path, name, path, spec, recursive=recursive, alternate_path=alternate,
                     backup_type_mask=mask)
    _document_call(table, add)


def _restore_method(table: _Table, wmd: WriterMetadata) -> None:
    try:
        wmd.set_restore_method(
            table.get("method", _choice(RestoreMethodType), RestoreMethodType.UNDEFINED),
            service=table.get("service", _text, ""), user_procedure=table.get("user_procedure", _text, ""),
            writer_restore=table.get("writer_restore", _choice(WriterRestoreCondition),
                                     WriterRestoreCondition.UNDEFINED),
            reboot_required=table.get("reboot_required", _flag, False))
    except DocumentError as exc:
        raise table.error(table.where, str(exc)) from None
    for mapping in table.tables("alternate_location"):
        _document_call(mapping, lambda t: wmd.add_alternate_location_mapping(
            t.need("path", _path), t.need("spec", _filespec), t.get("recursive", _flag, False),
            t.need("destination", _path)))
    table.done()


def _events(table: _Table) -> tuple[str | None, frozenset[int], dict[Event, EventCommand]]:
    timeout = table.get("timeout", _seconds, DEFAULT_TIMEOUT)
    user = table.get("user", _user, None)
    codes = table.get("retryable_exit_codes", _exit_codes, frozenset({RETRYABLE_EXIT}))
    commands: dict[Event, EventCommand] = {}
    for event in EVENTS:
        table.taken.add(event.value)
        value = table.data.get(event.value)
        if value is None:
            continue
        if isinstance(value, dict):
            entry = _Table(table.source, table.key(event.value), value)
            command = entry.need("command", _command)
            entry_timeout = entry.get("timeout", _seconds, timeout)
            entry.done()
        else:
            command = table.get(event.value, _command, "")
            entry_timeout = timeout
        if command.strip():
            commands[event] = EventCommand(event, command, entry_timeout)
    table.done()
    return user, codes, commands


def _command(value: Any) -> str:
    if isinstance(value, dict):
        raise TypeError("must be a shell command, or a table {command = \"...\", timeout = N}")
    text = _text(value)
    if "\x00" in text or len(text) > MAX_COMMAND:
        raise ValueError(f"must be a shell command of at most {MAX_COMMAND} characters")
    return text


# ---- the manifests shadowfs ships --------------------------------------------------------------------


def shipped() -> dict[str, str]:
    """The manifests installed with shadowfs (package data): name -> path."""
    folder = resources.files("shadowfs.vss").joinpath(SHIPPED)
    found = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".toml"):
            found[entry.name.removesuffix(".toml")] = str(entry)
    return dict(sorted(found.items()))
