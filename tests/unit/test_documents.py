"""Tests of `shadowfs.documents`: WMD/BCD round trips, the builder APIs, safe XML, range strings and files.

Layers: seeded random documents round-tripped through XML and dicts (the
lossless property); the corpus in `tests/unit/data/bad_documents/` plus generated
oversize/deep/wide documents, each refused with its expected message in
bounded time and memory; range strings and ranges files against their rules;
the builder methods' validation; the enums' VSS meanings.
"""

from __future__ import annotations

import json
import os
import random
import re
import string
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import pytest

from shadowfs.documents import (
    DEFAULT_FILESPEC_BACKUP_TYPE,
    AlternateLocationMapping,
    BackupComponents,
    BackupSchema,
    BackupType,
    ByteRange,
    Component,
    ComponentDependency,
    ComponentState,
    ComponentType,
    DifferencedFile,
    DirectedTarget,
    DocumentError,
    ExcludedFile,
    FileRestoreStatus,
    FileSpec,
    FileSpecBackupType,
    NewTarget,
    PartialFile,
    RangeError,
    RestoreMethod,
    RestoreMethodType,
    RestoreSubcomponent,
    RestoreTarget,
    RestoreType,
    RollForwardType,
    SnapshotContext,
    SnapshotDescription,
    SnapshotSetDescription,
    SourceType,
    UsageType,
    WriterComponents,
    WriterFailure,
    WriterIdentity,
    WriterMetadata,
    WriterRestoreCondition,
    WriterState,
    XmlLimits,
    check_directed_ranges,
    decode_ranges_file,
    encode_ranges_file,
    filespec_matches,
    format_range_string,
    parse_range_string,
    ranges_file_path,
    ranges_file_reference,
    read_ranges_fd,
    read_ranges_file,
    resolve_ranges,
    validate_ranges,
    write_ranges_file,
)

CORPUS = Path(__file__).parent / "data" / "bad_documents"
TIME_LIMIT = 5.0            # seconds to refuse any bad document (most take milliseconds; CI may be busy)
MEMORY_LIMIT = 64 << 20     # peak traced allocation while refusing one
WRITER = uuid.UUID("b3e3c194-ceb5-4b2d-a9af-641170a2a07e")
INSTANCE = uuid.UUID("8ef5e4b3-7eb2-4f29-82d3-ab9d5b28c10f")


# ---- random generation -----------------------------------------------------------------------------------

_TRICKY = ['"', "'", "<", ">", "&", "&amp;", "\n", "\r", "\t", "\r\n", " ", "  ", "é", "日本", "\U0001f600",
           "\\", "]]>", "<!--", "%", ";", "=", ",", ":", "\u00a0", "\u2028", "\x7f", "\x85"]


def _text(rng: random.Random, *, allow_empty: bool = True, max_len: int = 12) -> str:
    parts = []
    for _ in range(rng.randint(0 if allow_empty else 1, max_len)):
        if rng.random() < 0.3:
            parts.append(rng.choice(_TRICKY))
        else:
            parts.append(rng.choice(string.ascii_letters + string.digits + "-_. "))
    return "".join(parts)


def _name(rng: random.Random) -> str:
    while True:
        value = _text(rng, allow_empty=False, max_len=8).replace("/", "").replace("\\", "")
        if value and value not in (".", ".."):
            return value


def _path(rng: random.Random) -> str:
    path = "/" + "/".join(_name(rng) for _ in range(rng.randint(0, 4)))
    return path + "/" if rng.random() < 0.1 else path


def _filespec(rng: random.Random) -> str:
    return rng.choice(["*", "*.*", "?", "*.db", "log?.txt", "data[1]", _name(rng), _name(rng) + "*"])


def _logical_path(rng: random.Random) -> str:
    return "\\".join(_name(rng) for _ in range(rng.randint(0, 3)))


def _flags(rng: random.Random, cls: Any) -> Any:
    value = cls(0)
    for member in cls:
        if rng.random() < 0.4:
            value |= member
    return value


def _file_spec(rng: random.Random) -> FileSpec:
    return FileSpec(path=_path(rng), filespec=_filespec(rng), recursive=rng.random() < 0.5,
                    alternate_path=_path(rng) if rng.random() < 0.3 else "",
                    backup_type_mask=_flags(rng, FileSpecBackupType))


def random_wmd(rng: random.Random) -> WriterMetadata:
    """A valid, rich WMD built from plain dataclasses (not through the builder)."""
    components: list[Component] = []
    seen: set[tuple[str, str]] = set()
    for _ in range(rng.randint(0, 6)):
        ctype = rng.choice(list(ComponentType))
        logical_path = rng.choice([_logical_path(rng)] + [c.full_path for c in components])
        name = _name(rng)
        if (logical_path, name) in seen:
            continue
        seen.add((logical_path, name))
        database = ctype is ComponentType.DATABASE
        components.append(Component(
            type=ctype, logical_path=logical_path, name=name, caption=_text(rng),
            restore_metadata=rng.random() < 0.5, notify_on_backup_complete=rng.random() < 0.5,
            selectable_for_backup=rng.random() < 0.5, selectable_for_restore=rng.random() < 0.5,
            database_files=[_file_spec(rng) for _ in range(rng.randint(0, 3))] if database else [],
            log_files=[_file_spec(rng) for _ in range(rng.randint(0, 2))] if database else [],
            files=[] if database else [_file_spec(rng) for _ in range(rng.randint(0, 4))],
            dependencies=[ComponentDependency(writer_id=uuid.UUID(int=rng.getrandbits(128)),
                                              logical_path=_logical_path(rng), component_name=_name(rng))
                          for _ in range(rng.randint(0, 2))]))
    return WriterMetadata(
        identity=WriterIdentity(
            writer_id=uuid.UUID(int=rng.getrandbits(128)), instance_id=uuid.UUID(int=rng.getrandbits(128)),
            friendly_name=_text(rng, allow_empty=False), instance_name=_text(rng),
            usage=rng.choice(list(UsageType)), data_source=rng.choice(list(SourceType))),
        components=components,
        excluded_files=[ExcludedFile(path=_path(rng), filespec=_filespec(rng), recursive=rng.random() < 0.5)
                        for _ in range(rng.randint(0, 3))],
        restore_method=RestoreMethod(
            method=rng.choice(list(RestoreMethodType)), service=_text(rng), user_procedure=_text(rng),
            writer_restore=rng.choice(list(WriterRestoreCondition)), reboot_required=rng.random() < 0.5),
        alternate_location_mappings=[
            AlternateLocationMapping(path=_path(rng), filespec=_filespec(rng), recursive=rng.random() < 0.5,
                                     alternate_path=_path(rng)) for _ in range(rng.randint(0, 2))],
        backup_schema=_flags(rng, BackupSchema))


def _ranges(rng: random.Random, count: int | None = None) -> list[ByteRange]:
    count = count if count is not None else rng.randint(1, 5)
    offset = rng.choice([0, rng.getrandbits(20)])
    out = []
    for _ in range(count):
        length = rng.choice([1, rng.getrandbits(16) + 1, rng.getrandbits(40) + 1])
        out.append(ByteRange(offset, length))
        offset += length + rng.choice([0, rng.getrandbits(12)])
    rng.shuffle(out)
    return out


def _range_string(rng: random.Random) -> str:
    if rng.random() < 0.25:
        return ranges_file_reference(_path(rng))
    return format_range_string(_ranges(rng), hexadecimal=rng.random() < 0.3)


def random_bcd(rng: random.Random) -> BackupComponents:
    """A valid, rich BCD built from plain dataclasses."""
    writers = []
    for _ in range(rng.randint(0, 3)):
        states = []
        seen: set[tuple[str, str]] = set()
        for _ in range(rng.randint(0, 4)):
            key = (_logical_path(rng), _name(rng))
            if key in seen:
                continue
            seen.add(key)
            directed = []
            for _ in range(rng.randint(0, 2)):
                src = _ranges(rng)
                dst = [ByteRange(r.offset * 3 + 7, r.length) for r in src]
                directed.append(DirectedTarget(
                    source_path=_path(rng), source_filename=_name(rng),
                    source_ranges=format_range_string(src), destination_path=_path(rng),
                    destination_filename=_name(rng),
                    destination_ranges=(format_range_string(dst) if rng.random() < 0.8
                                        else ranges_file_reference(_path(rng)))))
            states.append(ComponentState(
                logical_path=key[0], name=key[1], type=rng.choice(list(ComponentType)),
                backup_succeeded=rng.random() < 0.5, backup_failure_msg=_text(rng), backup_stamp=_text(rng),
                previous_backup_stamp=_text(rng), backup_options=_text(rng), restore_options=_text(rng),
                additional_restores=rng.random() < 0.5, selected_for_restore=rng.random() < 0.5,
                restore_target=rng.choice(list(RestoreTarget)), pre_restore_failure_msg=_text(rng),
                post_restore_failure_msg=_text(rng), file_restore_status=rng.choice(list(FileRestoreStatus)),
                authoritative_restore=rng.random() < 0.5, restore_name=_text(rng),
                roll_forward_type=rng.choice(list(RollForwardType)), roll_forward_point=_text(rng),
                alternate_location_mappings=[AlternateLocationMapping(
                    path=_path(rng), filespec=_filespec(rng), recursive=rng.random() < 0.5,
                    alternate_path=_path(rng)) for _ in range(rng.randint(0, 2))],
                restore_subcomponents=[RestoreSubcomponent(
                    logical_path=_logical_path(rng), component_name=_name(rng), repair=rng.random() < 0.5)
                    for _ in range(rng.randint(0, 2))],
                differenced_files=[DifferencedFile(
                    path=_path(rng), filespec=_filespec(rng), recursive=rng.random() < 0.5,
                    last_modify_time=rng.choice([0, rng.getrandbits(63), (1 << 64) - 1]))
                    for _ in range(rng.randint(0, 3))],
                partial_files=[PartialFile(
                    path=_path(rng), filename=_name(rng), ranges=_range_string(rng), metadata=_text(rng),
                    ranges_file_path=_path(rng) if rng.random() < 0.2 else "")
                    for _ in range(rng.randint(0, 3))],
                directed_targets=directed,
                new_targets=[NewTarget(path=_path(rng), filespec=_filespec(rng), recursive=rng.random() < 0.5,
                                       alternate_path=_path(rng)) for _ in range(rng.randint(0, 2))]))
        writers.append(WriterComponents(instance_id=uuid.UUID(int=rng.getrandbits(128)),
                                        writer_id=uuid.UUID(int=rng.getrandbits(128)), components=states))
    snapshot_set = None
    if rng.random() < 0.7:
        snapshot_set = SnapshotSetDescription(
            snapshot_set_id=uuid.UUID(int=rng.getrandbits(128)), description=_text(rng),
            creation_time=rng.getrandbits(62),
            snapshots=[SnapshotDescription(
                snapshot_id=uuid.UUID(int=rng.getrandbits(128)), volume_name=f"vol{i}-{_name(rng)}",
                original_volume_name=_path(rng), device_object=rng.choice(["", _path(rng)]),
                creation_time=rng.getrandbits(62)) for i in range(rng.randint(0, 4))])
    return BackupComponents(
        select_components=rng.random() < 0.5, bootable_system_state_backup=rng.random() < 0.5,
        backup_type=rng.choice(list(BackupType)), partial_file_support=rng.random() < 0.5,
        context=rng.choice(list(SnapshotContext)), restore_type=rng.choice(list(RestoreType)),
        snapshot_set=snapshot_set, writers=writers)


# ---- round trips -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(150))
def test_wmd_round_trip(seed: int) -> None:
    doc = random_wmd(random.Random(seed))
    text = doc.to_xml()
    back = WriterMetadata.from_xml(text)
    assert back == doc
    assert back.to_xml() == text
    assert WriterMetadata.from_xml(text.encode("utf-8")) == doc
    assert WriterMetadata.from_dict(json.loads(json.dumps(doc.to_dict()))) == doc


@pytest.mark.parametrize("seed", range(150))
def test_bcd_round_trip(seed: int) -> None:
    doc = random_bcd(random.Random(seed))
    text = doc.to_xml()
    back = BackupComponents.from_xml(text)
    assert back == doc
    assert back.to_xml() == text
    assert BackupComponents.from_dict(json.loads(json.dumps(doc.to_dict()))) == doc


def test_round_trip_keeps_awkward_strings_exactly() -> None:
    awkward = 'a"b\'c<d>e&f\ng\rh\ti\r\nj  k \u2028 \x85 \U0001f600 &amp; ]]> <!-- -->'
    doc = BackupComponents()
    state = doc.add_component(INSTANCE, WRITER, ComponentType.FILEGROUP, "", "c")
    state.set_backup_stamp(awkward)
    state.set_backup_succeeded(False, awkward)
    back = BackupComponents.from_xml(doc.to_xml())
    assert back.writers[0].components[0].backup_stamp == awkward
    assert back.writers[0].components[0].backup_failure_msg == awkward


def test_minimal_documents_and_defaults() -> None:
    wmd = WriterMetadata.from_xml(
        f'<WRITER_METADATA version="1.1"><IDENTIFICATION writerId="{WRITER}" instanceId="{INSTANCE}" '
        'friendlyName="w"/></WRITER_METADATA>')
    assert wmd.components == [] and wmd.backup_schema == BackupSchema.UNDEFINED
    assert wmd.restore_method == RestoreMethod()
    assert wmd.identity.usage is UsageType.USER_DATA
    bcd = BackupComponents.from_xml(b'<?xml version="1.0"?><BACKUP_COMPONENTS version="1.2"/>')
    assert bcd == BackupComponents()
    assert bcd.snapshot_set_id is None
    # a newer minor version is read; comments and processing instructions are ignored
    BackupComponents.from_xml('<BACKUP_COMPONENTS version="1.9"><!-- c --><?pi x?></BACKUP_COMPONENTS>')


def test_utf16_document_is_read() -> None:
    doc = random_bcd(random.Random(7))
    text = doc.to_xml().replace('encoding="UTF-8"', 'encoding="UTF-16"')
    assert BackupComponents.from_xml(text.encode("utf-16")) == doc


# ---- the builder APIs ------------------------------------------------------------------------------------

def _writer() -> WriterMetadata:
    return WriterMetadata.create(WRITER, INSTANCE, "SQLite", instance_name="main")


def test_wmd_builder_builds_the_document() -> None:
    wmd = _writer()
    wmd.add_component(ComponentType.DATABASE, "", "app", selectable_for_backup=True)
    wmd.add_database_files("", "app", "/srv/app", "app.db")
    wmd.add_database_log_files("", "app", "/srv/app", "app.db-wal",
                               backup_type_mask=FileSpecBackupType.ALL_BACKUP_REQUIRED)
    wmd.add_component(ComponentType.FILEGROUP, "app", "config")
    wmd.add_component(ComponentType.FILEGROUP, "app\\config", "extra")
    wmd.add_component(ComponentType.FILEGROUP, "other", "thing")
    wmd.add_files("app", "config", "/etc/app", "*.conf", recursive=True, alternate_path="/var/tmp/app")
    wmd.add_exclude_files("/srv/app", "*.tmp", True)
    wmd.add_component_dependency("app", "config", WRITER, "", "app")
    wmd.set_restore_method(RestoreMethodType.STOP_RESTORE_START, service="app.service",
                           writer_restore=WriterRestoreCondition.ALWAYS, reboot_required=False)
    wmd.add_alternate_location_mapping("/srv/app", "*", False, "/srv/restored")
    wmd.set_backup_schema(BackupSchema.INCREMENTAL | BackupSchema.LOG | BackupSchema.TIMESTAMPED)
    app = wmd.get_component("", "app")
    assert app is not None and app.database_files[0].backup_type_mask == DEFAULT_FILESPEC_BACKUP_TYPE
    assert [c.full_path for c in wmd.subcomponents(app)] == ["app\\config", "app\\config\\extra"]
    extra = wmd.get_component("app\\config", "extra")
    assert extra is not None and [c.name for c in wmd.parents(extra)] == ["app", "config"]
    assert wmd.is_excluded("/srv/app/sub/x.tmp") and not wmd.is_excluded("/srv/app/x.db")
    assert wmd.backup_schema.supports(BackupType.INCREMENTAL)
    assert not wmd.backup_schema.supports(BackupType.DIFFERENTIAL)
    assert WriterMetadata.from_xml(wmd.to_xml()) == wmd


@pytest.mark.parametrize(("call", "message"), [
    (lambda w: w.add_component(ComponentType.DATABASE, "", "app"), "duplicate component 'app'"),
    (lambda w: w.add_component("table", "", "x"), "is not a ComponentType"),
    (lambda w: w.add_component(ComponentType.DATABASE, "\\a", "x"), "starts or ends with a backslash"),
    (lambda w: w.add_component(ComponentType.DATABASE, "a", "b\\c"), "contains a backslash"),
    (lambda w: w.add_component(ComponentType.DATABASE, "a", ""), "component name is empty"),
    (lambda w: w.add_component(ComponentType.DATABASE, "a", "x\x00"), "U+0000"),
    (lambda w: w.add_files("", "app", "/srv", "*"), "is a database, not a filegroup"),
    (lambda w: w.add_files("", "nope", "/srv", "*"), "no component 'nope'"),
    (lambda w: w.add_database_files("", "app", "/srv", "a/b"), "contains '/'"),
    (lambda w: w.add_database_files("", "app", "/srv", ".."), "names no file"),
    (lambda w: w.add_database_files("", "app", "/srv", "x" * 256), "longer than 255"),
    (lambda w: w.add_database_log_files("", "app", "srv", "*"), "not absolute"),
    (lambda w: w.add_database_log_files("", "app", "/srv/../etc", "*"), "'..' component"),
    (lambda w: w.add_database_files("", "app", "/srv", "*", backup_type_mask=1 << 40), "must be FileSpec"),
    (lambda w: w.add_exclude_files("/srv", ""), "file spec is empty"),
    (lambda w: w.add_alternate_location_mapping("/srv", "*", False, "relative"), "not absolute"),
    (lambda w: w.set_backup_schema(1 << 40), "not BackupSchema flags"),
    (lambda w: w.set_restore_method("SOMETIMES"), "set_restore_method"),
    (lambda w: w.add_component_dependency("", "app", WRITER, "", "app"), "depends on itself"),
    (lambda w: w.add_component_dependency("", "app", "nope", "", "x"), "is not a UUID"),
])
def test_wmd_builder_refuses(call: Any, message: str) -> None:
    wmd = _writer()
    wmd.add_component(ComponentType.DATABASE, "", "app")
    before = wmd.to_xml()
    with pytest.raises(DocumentError, match=re.escape(message)):
        call(wmd)
    assert wmd.to_xml() == before  # a refused call changes nothing


def test_create_refuses_bad_identity() -> None:
    with pytest.raises(DocumentError, match="not a UUID|badly formed"):
        WriterMetadata.create("nope", INSTANCE, "w")
    with pytest.raises(DocumentError, match="friendlyName.*must not be empty"):
        WriterMetadata.create(WRITER, INSTANCE, "")


def test_bcd_builder_and_component_calls() -> None:
    bcd = BackupComponents()
    bcd.set_context(SnapshotContext.BACKUP)
    bcd.set_backup_state(True, False, BackupType.DIFFERENTIAL, True)
    set_id = uuid.uuid4()
    bcd.start_snapshot_set(set_id, description="nightly")
    bcd.add_snapshot(uuid.uuid4(), "data", "/srv", device_object="/run/shadowfs/snapshots/x/data")
    state = bcd.add_component(INSTANCE, WRITER, ComponentType.DATABASE, "", "app")
    state.set_backup_stamp("wal:42")
    state.set_previous_backup_stamp("wal:7")
    state.add_differenced_files_by_last_modify_time("/srv/app", "*.log", True, 0)
    state.add_partial_file("/srv/app", "app.db", "0:4096,0x10000:0x1000", "pages")
    state.add_partial_file("/srv/app", "app.db", "file=/srv/app/ranges.bin")
    state.set_ranges_file_path(1, "/restore/ranges.bin")
    state.add_directed_target("/srv/app", "a.db", "0:10,100:20", "/srv/app", "b.db", "500:10,0:20")
    state.add_new_target("/srv/app", "*", True, "/srv/new")
    state.add_restore_subcomponent("app", "config", repair=True)
    state.add_alternative_location_mapping("/srv/app", "*.db", False, "/srv/elsewhere")
    state.set_restore_target(RestoreTarget.DIRECTED)
    state.set_backup_succeeded(True)
    state.set_additional_restores(True)
    state.set_selected_for_restore(True)
    state.set_file_restore_status(FileRestoreStatus.ALL)
    state.set_backup_options("o")
    state.set_restore_options("r")
    state.set_pre_restore_failure_msg("")
    state.set_post_restore_failure_msg("recovery failed")
    bcd.set_restore_state(RestoreType.BY_COPY)
    assert bcd.snapshot_set_id == set_id
    assert bcd.component(INSTANCE, "", "app") is state
    assert [(w.instance_id, c.name) for w, c in bcd.iter_components()] == [(INSTANCE, "app")]
    assert state.partial_files[1].uses_ranges_file and not state.partial_files[0].uses_ranges_file
    assert BackupComponents.from_xml(bcd.to_xml()) == bcd


@pytest.mark.parametrize(("call", "message"), [
    (lambda b, s: b.add_component(INSTANCE, WRITER, ComponentType.DATABASE, "", "app"), "already selected"),
    (lambda b, s: b.add_component(INSTANCE, uuid.uuid4(), ComponentType.DATABASE, "", "x"),
     "belongs to writer"),
    (lambda b, s: b.component(INSTANCE, "", "nope"), "no component 'nope'"),
    (lambda b, s: b.set_backup_state(True, False, "weekly"), "is not a BackupType"),
    (lambda b, s: b.set_backup_state(1, False, BackupType.FULL), "must be bool"),
    (lambda b, s: b.set_context("forever"), "is not a SnapshotContext"),
    (lambda b, s: b.add_snapshot(uuid.uuid4(), "v", "/srv"), "call start_snapshot_set first"),
    (lambda b, s: s.add_partial_file("/srv", "f", "0:10,5:1"), "overlap"),
    (lambda b, s: s.add_partial_file("/srv", "f", "file=relative"), "not absolute"),
    (lambda b, s: s.add_partial_file("/srv", "f", ""), "range string is empty"),
    (lambda b, s: s.add_directed_target("/a", "x", "0:10", "/b", "y", "0:10,10:1"), "1 source ranges but 2"),
    (lambda b, s: s.add_directed_target("/a", "x", "0:10", "/b", "y", "0:9"), "differ in length"),
    (lambda b, s: s.add_differenced_files_by_last_modify_time("/a", "*", False, -1), "not an unsigned"),
    (lambda b, s: s.add_differenced_files_by_last_modify_time("/a", "*", False, 1 << 64), "not an unsigned"),
    (lambda b, s: s.add_new_target("/a", "*", False, ""), "path is empty"),
    (lambda b, s: s.set_ranges_file_path(0, "/x"), "no partial file 0"),
    (lambda b, s: s.set_restore_target("SOMEWHERE"), "is not a RestoreTarget"),
    (lambda b, s: s.set_backup_succeeded("yes"), "must be bool"),
    (lambda b, s: s.set_backup_stamp("\x01"), "U+0001"),
])
def test_bcd_builder_refuses(call: Any, message: str) -> None:
    bcd = BackupComponents()
    state = bcd.add_component(INSTANCE, WRITER, ComponentType.DATABASE, "", "app")
    before = bcd.to_xml()
    with pytest.raises(DocumentError, match=re.escape(message)):
        call(bcd, state)
    assert bcd.to_xml() == before


def test_set_ranges_file_path_needs_a_ranges_file() -> None:
    state = BackupComponents().add_component(INSTANCE, WRITER, ComponentType.DATABASE, "", "app")
    state.add_partial_file("/srv", "f", "0:10")
    with pytest.raises(DocumentError, match="lists its ranges directly"):
        state.set_ranges_file_path(0, "/x")


def test_add_snapshot_refuses_duplicates() -> None:
    bcd = BackupComponents()
    bcd.start_snapshot_set(uuid.uuid4())
    snap = uuid.uuid4()
    bcd.add_snapshot(snap, "a", "/a")
    with pytest.raises(DocumentError, match="duplicate snapshot id"):
        bcd.add_snapshot(snap, "b", "/b")
    with pytest.raises(DocumentError, match="in the set twice"):
        bcd.add_snapshot(uuid.uuid4(), "a", "/c")
    with pytest.raises(DocumentError, match="volume name"):
        bcd.add_snapshot(uuid.uuid4(), "a/b", "/c")
    assert bcd.snapshot_set is not None and len(bcd.snapshot_set.snapshots) == 1


def test_validate_catches_direct_edits() -> None:
    wmd = _writer()
    wmd.add_component(ComponentType.FILEGROUP, "", "g")
    wmd.components[0].files.append(FileSpec(path="/srv", filespec="x/y"))
    with pytest.raises(DocumentError, match=r"FILE_GROUP\[1\]/FILE_LIST\[1\]: attribute filespec='x/y'"):
        wmd.to_xml()
    wmd.components[0].files.clear()
    wmd.components[0].selectable_for_backup = "yes"  # type: ignore[assignment]
    with pytest.raises(DocumentError, match="selectable must be bool"):
        wmd.validate()
    wmd.components[0].selectable_for_backup = True
    wmd.components.append(Component(type=ComponentType.DATABASE, name="g"))
    with pytest.raises(DocumentError, match="duplicate component 'g'"):
        wmd.to_dict()
    bcd = BackupComponents()
    bcd.writers.append(WriterComponents(instance_id=INSTANCE, writer_id=WRITER))
    bcd.writers.append(WriterComponents(instance_id=INSTANCE, writer_id=WRITER))
    with pytest.raises(DocumentError, match="appears twice"):
        bcd.to_xml()


# ---- dict form -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.update(extra=1), "unknown key 'extra'"),
    (lambda d: d.pop("identity"), "required key 'identity' is missing"),
    (lambda d: d["identity"].update(writer_id="zzz"), "is not a UUID"),
    (lambda d: d["identity"].update(usage="GAMES"), "is not a UsageType"),
    (lambda d: d.update(backup_schema="1"), "expected an integer"),
    (lambda d: d.update(backup_schema=True), "expected an integer"),
    (lambda d: d.update(backup_schema=1 << 40), "not BackupSchema flags"),
    (lambda d: d.update(components={}), "expected a list"),
    (lambda d: d["components"].append([]), "expected an object"),
    (lambda d: d["components"][0].update(selectable_for_backup=1), "expected true or false"),
    (lambda d: d["components"][0].update(name=5), "expected a string"),
    (lambda d: d["components"][0]["files"][0].update(path="rel"), "not absolute"),
    (lambda d: d["components"].append(dict(d["components"][0])), "duplicate component"),
])
def test_from_dict_is_strict(mutate: Any, message: str) -> None:
    wmd = _writer()
    wmd.add_component(ComponentType.FILEGROUP, "", "g")
    wmd.add_files("", "g", "/srv", "*")
    data = json.loads(json.dumps(wmd.to_dict()))
    mutate(data)
    with pytest.raises(DocumentError, match=re.escape(message)):
        WriterMetadata.from_dict(data)


def test_bcd_from_dict_refuses_bad_ranges_and_non_dicts() -> None:
    bcd = BackupComponents()
    bcd.add_component(INSTANCE, WRITER, ComponentType.DATABASE, "", "app").add_partial_file("/s", "f", "0:1")
    data = bcd.to_dict()
    data["writers"][0]["components"][0]["partial_files"][0]["ranges"] = "0:1,0:1"
    with pytest.raises(RangeError, match="overlap"):
        BackupComponents.from_dict(data)
    with pytest.raises(DocumentError, match="expected an object"):
        BackupComponents.from_dict([])


# ---- bad documents ---------------------------------------------------------------------------------------

_HEADERLESS = {"empty.xml": ("bcd", "document is empty"), "binary_garbage.xml": ("wmd", "malformed XML")}
_HEADER = re.compile(rb"<!-- kind: (wmd|bcd); expect: (.*?) -->")


def _corpus() -> list[tuple[str, str, str]]:
    cases = []
    for path in sorted(CORPUS.glob("*.xml")):
        if path.name in _HEADERLESS:
            kind, expect = _HEADERLESS[path.name]
        else:
            found = _HEADER.search(path.read_bytes()[:4096])
            assert found, f"{path.name} has no '<!-- kind: ...; expect: ... -->' header"
            kind, expect = found.group(1).decode(), found.group(2).decode()
        cases.append((path.name, kind, expect))
    return cases


def _refused(kind: str, data: str | bytes, expect: str, limits: XmlLimits | None = None, *,
             memory: bool = True) -> DocumentError:
    """Check that `data` is refused with `expect` in the message, in bounded time and memory."""
    cls: Any = WriterMetadata if kind == "wmd" else BackupComponents
    args = (data,) if limits is None else (data, limits)
    started = time.monotonic()
    with pytest.raises(DocumentError) as info:
        cls.from_xml(*args)
    elapsed = time.monotonic() - started
    assert expect in str(info.value), f"expected {expect!r} in {str(info.value)!r}"
    assert elapsed < TIME_LIMIT, f"took {elapsed:.2f}s"
    if not memory:  # tracemalloc makes allocation-heavy work many times slower
        return info.value
    tracemalloc.start()
    try:
        with pytest.raises(DocumentError):
            cls.from_xml(*args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT + len(data) * 2, f"peak memory {peak} bytes"
    return info.value


def test_corpus_is_big_enough() -> None:
    assert len(_corpus()) >= 15


@pytest.mark.parametrize(("name", "kind", "expect"), _corpus())
def test_bad_document_is_refused(name: str, kind: str, expect: str) -> None:
    error = _refused(kind, (CORPUS / name).read_bytes(), expect)
    assert "\n" not in str(error)  # one clear line


def test_oversize_document_is_refused_before_parsing() -> None:
    limit = XmlLimits().max_bytes
    padding = " " * (limit + 1)
    _refused("bcd", f'<BACKUP_COMPONENTS version="1.2">{padding}</BACKUP_COMPONENTS>', "document too large")
    _refused("bcd", b'<BACKUP_COMPONENTS version="1.2"/>' + b" " * limit, "document too large")
    small = XmlLimits(max_bytes=100)
    _refused("bcd", '<BACKUP_COMPONENTS version="1.2"/>' + " " * 100, "the limit is 100", small)


def test_deep_document_is_refused() -> None:
    depth = 100_000
    data = "<BACKUP_COMPONENTS version=\"1.2\">" + "<a>" * depth + "</a>" * depth + "</BACKUP_COMPONENTS>"
    error = _refused("bcd", data, "document too deep")
    assert "nested more than 16 levels" in str(error)


def test_wide_document_is_refused() -> None:
    item = '<EXCLUDE_FILES path="/a" filespec="b"/>'
    data = (f'<WRITER_METADATA version="1.1"><IDENTIFICATION writerId="{WRITER}" instanceId="{INSTANCE}" '
            f'friendlyName="w"/><BACKUP_LOCATIONS>{item * 110_000}</BACKUP_LOCATIONS></WRITER_METADATA>')
    _refused("wmd", data, "too many elements")
    _refused("wmd", data[:20_000], "too many elements", XmlLimits(max_elements=100))


def test_many_long_range_strings_are_handled_in_bounded_time() -> None:
    ranges = ",".join(f"{2 * i}:1" for i in range(65_535))
    item = f'<PARTIAL_FILES path="/a" filespec="b" ranges="{ranges}"/>'
    last = f'<PARTIAL_FILES path="/a" filespec="b" ranges="{ranges},6:1"/>'
    data = ('<BACKUP_COMPONENTS version="1.2">'
            f'<WRITER_COMPONENTS instanceId="{INSTANCE}" writerId="{WRITER}">'
            f'<COMPONENT componentName="c" componentType="database">{item * 9}{last}</COMPONENT>'
            "</WRITER_COMPONENTS></BACKUP_COMPONENTS>")
    error = _refused("bcd", data, "range 4 (6:1) and range 65536 (6:1) overlap", memory=False)
    assert "PARTIAL_FILES[10]" in str(error)


def test_entity_expansion_with_utf16_is_refused() -> None:
    bomb = (CORPUS / "billion_laughs.xml").read_text().replace('<?xml version="1.0"?>',
                                                              '<?xml version="1.0" encoding="UTF-16"?>')
    _refused("bcd", bomb.encode("utf-16"), "unsafe XML refused")


def test_non_document_inputs_are_refused() -> None:
    with pytest.raises(DocumentError, match="must be str or bytes"):
        BackupComponents.from_xml(123)  # type: ignore[arg-type]
    with pytest.raises(DocumentError, match="not valid Unicode"):
        BackupComponents.from_xml('<BACKUP_COMPONENTS version="1.2" context="\ud800"/>')


def test_errors_name_the_line() -> None:
    data = (CORPUS / "bad_enum_restore_target.xml").read_text()
    with pytest.raises(DocumentError, match=r"WRITER_COMPONENTS\[1\]/COMPONENT\[1\] \(line 4\)"):
        BackupComponents.from_xml(data)


# ---- range strings ---------------------------------------------------------------------------------------

def test_parse_and_format_range_strings() -> None:
    assert parse_range_string("0:10,20:5") == [ByteRange(0, 10), ByteRange(20, 5)]
    assert parse_range_string("0x10:0X20,0:16") == [ByteRange(16, 32), ByteRange(0, 16)]
    assert parse_range_string("007:1") == [ByteRange(7, 1)]
    assert parse_range_string("0:10,10:10") == [ByteRange(0, 10), ByteRange(10, 10)]  # touching is fine
    assert parse_range_string("18446744073709551615:1") == [ByteRange((1 << 64) - 1, 1)]
    assert format_range_string([(16, 32), (0, 1)]) == "16:32,0:1"
    assert format_range_string([(16, 32)], hexadecimal=True) == "0x10:0x20"
    assert parse_range_string("0:10", file_size=10) == [ByteRange(0, 10)]
    assert ByteRange(5, 10).end == 15 and str(ByteRange(5, 10)) == "5:10"


@pytest.mark.parametrize(("text", "message"), [
    ("", "range string is empty"),
    (",", "range 1 is empty"),
    ("0:10,", "range 2 is empty"),
    ("0:10,,20:1", "range 2 is empty"),
    ("10", "range 1 '10' is not offset:length"),
    ("1:2:3", "is not offset:length"),
    (":5", "offset is empty"),
    ("5:", "length is empty"),
    (" 0:10", "is not a decimal"),
    ("0:10 ", "is not a decimal"),
    ("+1:2", "is not a decimal"),
    ("-1:2", "is not a decimal"),
    ("1.5:2", "is not a decimal"),
    ("0x:2", "is not a decimal"),
    ("0xg:2", "is not a decimal"),
    ("１:2", "is not a decimal"),  # a full-width digit is not an ASCII digit
    ("1e3:2", "is not a decimal"),
    ("0:0", "range 1 (0:0) has zero length"),
    ("18446744073709551616:1", "does not fit in 64 bits"),
    ("0x10000000000000000:1", "does not fit in 64 bits"),
    ("1" * 41 + ":1", "too long"),
    ("18446744073709551615:2", "runs past 2**64"),
    ("0:10,5:10", "range 1 (0:10) and range 2 (5:10) overlap"),
    ("100:10,0:50,40:70", "overlap"),
    ("0:10,0:10", "overlap"),
    ("file=/srv/ranges", "names a ranges file"),
])
def test_bad_range_strings(text: str, message: str) -> None:
    with pytest.raises(RangeError, match=re.escape(message)):
        parse_range_string(text)


def test_ranges_beyond_the_end_of_the_file() -> None:
    expected = r"range 2 \(90:20\) ends at 110, beyond the end of the file \(size 100\)"
    with pytest.raises(RangeError, match=expected):
        parse_range_string("0:10,90:20", file_size=100)
    with pytest.raises(RangeError, match="beyond the end"):
        validate_ranges([(0, 1)], file_size=0)


def test_validate_ranges_types_and_empty() -> None:
    with pytest.raises(RangeError, match="no ranges"):
        validate_ranges([])
    with pytest.raises(RangeError, match="must be integers"):
        validate_ranges([(True, 1)])
    with pytest.raises(RangeError, match="unsigned 64-bit"):
        validate_ranges([(-1, 1)])
    with pytest.raises(RangeError, match="must be str"):
        parse_range_string(5)  # type: ignore[arg-type]


def test_range_string_count_cap() -> None:
    many = ",".join(f"{2 * i}:1" for i in range(70_000))
    started = time.monotonic()
    with pytest.raises(RangeError, match="70000 ranges, more than 65536: use a ranges file"):
        parse_range_string(many)
    assert time.monotonic() - started < 0.5
    assert len(parse_range_string(many, max_ranges=70_000)) == 70_000
    with pytest.raises(RangeError, match="more than 2"):
        parse_range_string("0:1,2:1,4:1", max_ranges=2)


def test_ranges_file_references() -> None:
    assert ranges_file_path("file=/a/b") == "/a/b"
    assert ranges_file_path("0:1") is None
    assert ranges_file_reference("/a/b") == "file=/a/b"
    with pytest.raises(RangeError, match="not absolute"):
        ranges_file_reference("a/b")


def test_directed_ranges_must_pair_up() -> None:
    check_directed_ranges([ByteRange(0, 5), ByteRange(10, 5)], [ByteRange(100, 5), ByteRange(0, 5)])
    with pytest.raises(RangeError, match="2 source ranges but 1 destination"):
        check_directed_ranges([ByteRange(0, 5), ByteRange(10, 5)], [ByteRange(0, 10)])
    with pytest.raises(RangeError, match="range 1: source 0:5 and destination 0:6 differ in length"):
        check_directed_ranges([ByteRange(0, 5)], [ByteRange(0, 6)])


@pytest.mark.parametrize("seed", range(30))
def test_range_string_round_trip(seed: int) -> None:
    rng = random.Random(seed)
    ranges = _ranges(rng, rng.randint(1, 50))
    for hexadecimal in (False, True):
        assert parse_range_string(format_range_string(ranges, hexadecimal=hexadecimal)) == ranges
    assert decode_ranges_file(encode_ranges_file(ranges)) == ranges


# ---- ranges files ----------------------------------------------------------------------------------------

def _u64(*values: int) -> bytes:
    return b"".join(v.to_bytes(8, "little") for v in values)


def test_ranges_file_format_is_count_then_pairs_little_endian() -> None:
    assert encode_ranges_file([(1, 2), (16, 4)]) == _u64(2, 1, 2, 16, 4)
    assert decode_ranges_file(_u64(1, 0x1000, 0x200)) == [ByteRange(0x1000, 0x200)]


@pytest.mark.parametrize(("data", "message"), [
    (b"", "too short to hold the range count"),
    (b"\x01\x00\x00", "too short"),
    (_u64(1, 0, 5) + b"\x00", "not a whole number of 64-bit integers"),
    (_u64(2, 0, 5), "it says 2 ranges (40 bytes) but is 24 bytes (1 ranges)"),
    (_u64(1, 0, 5, 10, 5), "it says 1 ranges (24 bytes) but is 40 bytes (2 ranges)"),
    (_u64(1), "it says 1 ranges"),
    (_u64(0), "no ranges"),
    (_u64((1 << 64) - 1, 0, 1), "more than the limit"),
    (_u64(1 << 40), "more than the limit"),
    (_u64(2, 0, 10, 5, 10), "overlap"),
    (_u64(1, 0, 0), "zero length"),
    (_u64(1, (1 << 64) - 1, 2), "runs past 2**64"),
])
def test_bad_ranges_files(data: bytes, message: str) -> None:
    started = time.monotonic()
    with pytest.raises(RangeError, match=re.escape(message)):
        decode_ranges_file(data)
    assert time.monotonic() - started < TIME_LIMIT


def test_ranges_file_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "ranges.bin"
    write_ranges_file(path, [(0, 4096), (8192, 100)])
    assert path.read_bytes() == _u64(2, 0, 4096, 8192, 100)
    assert read_ranges_file(path) == [ByteRange(0, 4096), ByteRange(8192, 100)]
    assert read_ranges_file(path, file_size=8292) == [ByteRange(0, 4096), ByteRange(8192, 100)]
    with pytest.raises(RangeError, match=r"ranges\.bin'.*beyond the end of the file \(size 8291\)"):
        read_ranges_file(path, file_size=8291)
    assert resolve_ranges(f"file={path}") == [ByteRange(0, 4096), ByteRange(8192, 100)]
    assert resolve_ranges("5:5") == [ByteRange(5, 5)]
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert resolve_ranges("file=/ranges.bin", dir_fd=root) == [ByteRange(0, 4096), ByteRange(8192, 100)]
    finally:
        os.close(root)
    assert [p.name for p in tmp_path.iterdir()] == ["ranges.bin"]  # no temporary file left behind
    with pytest.raises(RangeError):
        write_ranges_file(tmp_path / "bad.bin", [(0, 10), (5, 1)])
    assert not (tmp_path / "bad.bin").exists()


def test_ranges_file_refusals_on_disk(tmp_path: Path) -> None:
    (tmp_path / "short.bin").write_bytes(_u64(3, 0, 1))
    with pytest.raises(RangeError, match=r"short\.bin'.*count disagrees with its length"):
        read_ranges_file(tmp_path / "short.bin")
    with pytest.raises(RangeError, match="cannot open ranges file"):
        read_ranges_file(tmp_path / "missing.bin")
    with pytest.raises(RangeError, match="not a regular file"):
        read_ranges_file(tmp_path)
    (tmp_path / "link.bin").symlink_to(tmp_path / "short.bin")
    with pytest.raises(RangeError, match="cannot open ranges file"):
        read_ranges_file(tmp_path / "link.bin")
    (tmp_path / "big.bin").write_bytes(_u64(3, 0, 1, 2, 1, 4, 1))
    with pytest.raises(RangeError, match="more than 2 ranges"):
        read_ranges_file(tmp_path / "big.bin", max_ranges=2)
    with pytest.raises(RangeError, match="not absolute"):
        resolve_ranges("file=relative.bin")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(RangeError, match="not a regular file"):  # and no hang opening it
        read_ranges_file(tmp_path / "fifo")


def test_read_ranges_fd(tmp_path: Path) -> None:
    (tmp_path / "r.bin").write_bytes(_u64(1, 4, 4))
    fd = os.open(tmp_path / "r.bin", os.O_RDONLY)
    try:
        assert read_ranges_fd(fd) == [ByteRange(4, 4)]
        os.lseek(fd, 0, os.SEEK_SET)
        with pytest.raises(RangeError, match=r"ranges file 'snap:/r\.bin': .*beyond the end"):
            read_ranges_fd(fd, name="snap:/r.bin", file_size=7)
    finally:
        os.close(fd)


# ---- file specs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "name", "expected"), [
    ("*", "anything", True), ("*", "", True), ("*.*", "noext", True), ("*.db", "a.db", True),
    ("*.db", "a.db-wal", False), ("?", "a", True), ("?", "ab", False), ("a?c", "abc", True),
    ("data[1]", "data[1]", True), ("data[1]", "data1", False), ("A*", "a", False),
    ("*a*b*c", "xxaxxbxxc", True), ("*a*b*c", "xxaxxbxxcx", False), ("**", "x", True),
])
def test_filespec_matches(spec: str, name: str, expected: bool) -> None:
    assert filespec_matches(spec, name) is expected


def test_filespec_matching_is_fast_on_hostile_patterns() -> None:
    started = time.monotonic()
    assert not filespec_matches("*a" * 120 + "b", "a" * 255)
    assert time.monotonic() - started < 1.0


def test_file_spec_covers() -> None:
    spec = FileSpec(path="/srv/db/", filespec="*.db")
    assert spec.covers("/srv/db/a.db") and not spec.covers("/srv/db/sub/a.db")
    recursive = FileSpec(path="/srv/db", filespec="*.db", recursive=True)
    assert recursive.covers("/srv/db/sub/deeper/a.db") and not recursive.covers("/srv/dbx/a.db")
    assert FileSpec(path="/", filespec="x", recursive=True).covers("/a/x")
    assert FileSpec(path="/", filespec="x").covers("/x")


# ---- enums -----------------------------------------------------------------------------------------------

def test_enum_meanings() -> None:
    assert WriterState.STABLE.code == 1 and WriterState.FAILED_AT_BACKUP_SHUTDOWN.code == 15
    assert WriterState.FAILED_AT_FREEZE.is_failed and not WriterState.WAITING_FOR_THAW.is_failed
    assert WriterFailure.NON_RETRYABLE.vss_name == "VSS_E_WRITERERROR_NONRETRYABLE"
    assert WriterFailure.OUT_OF_RESOURCES.vss_name == "VSS_E_WRITERERROR_OUTOFRESOURCES"
    assert int(DEFAULT_FILESPEC_BACKUP_TYPE) == 3855
    assert int(FileSpecBackupType.ALL_SNAPSHOT_REQUIRED) == 0xF00
    log_only = FileSpecBackupType.LOG_BACKUP_REQUIRED
    assert log_only.backup_required(BackupType.LOG) and not log_only.backup_required(BackupType.FULL)
    assert not log_only.snapshot_required(BackupType.LOG)
    assert DEFAULT_FILESPEC_BACKUP_TYPE.snapshot_required(BackupType.COPY)
    assert BackupSchema.UNDEFINED.supports(BackupType.FULL)
    assert not BackupSchema.UNDEFINED.supports(BackupType.COPY)
    assert BackupType.COPY.code == 5 and not BackupType.COPY.updates_history
    assert ComponentType.FILEGROUP.code == 2
    assert SnapshotContext.BACKUP.auto_release and SnapshotContext.BACKUP.involves_writers
    assert not SnapshotContext.CLIENT_ACCESSIBLE.auto_release
    assert not SnapshotContext.FILE_SHARE_BACKUP.involves_writers
