"""Express writer manifests (`vss.express_manifest`), without a daemon.

A manifest with every key becomes the Writer Metadata Document it declares, with stable ids; the
PostgreSQL manifest shadowfs ships loads; every kind of mistake (not TOML, a missing or unknown
key, a value of the wrong type or out of range, rules of the WMD) is one error naming the file,
the key and the problem, and `shadowfs writer run` exits 2 with it before connecting anywhere.
The writer running its commands against a daemon: tests/daemon/test_express_writer.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from shadowfs.documents import (
    BackupSchema,
    ComponentType,
    FileSpecBackupType,
    RestoreMethodType,
    SourceType,
    UsageType,
    WriterMetadata,
    WriterRestoreCondition,
)
from shadowfs.errors import EXIT_REFUSED, ManifestError
from shadowfs.service.protocol import Event
from shadowfs.vss import express_manifest
from shadowfs.vss.express_manifest import EXPRESS_NAMESPACE

SHADOWFS = [sys.executable, "-m", "shadowfs"]
ROOT = Path(__file__).resolve().parents[2]

EVERY_KEY = """
[writer]
name = "Inventory"
instance_name = "shop-1"
usage = "SYSTEM_SERVICE"
data_source = "NONTRANSACTION_DB"
freeze_timeout = 30
backup_schema = ["differential", "incremental", "timestamped"]

[restore_method]
method = "RESTORE_IF_CAN_REPLACE"
service = "inventory"
user_procedure = "see the runbook"
writer_restore = "always"
reboot_required = false

[[restore_method.alternate_location]]
path = "/srv/inv/db"
spec = "*.db"
recursive = false
destination = "/srv/inv/restored"

[[component]]
name = "db"
type = "database"
logical_path = "Inventory"
caption = "the database"
selectable = true
selectable_for_restore = false
notify_on_backup_complete = true
restore_metadata = true

[[component.file]]
path = "/srv/inv/db"
spec = "*.db"
recursive = true
alternate_path = "/srv/inv/replica"
backup_type_mask = ["FULL_BACKUP_REQUIRED", "ALL_SNAPSHOT_REQUIRED"]

[[component.log_file]]
path = "/srv/inv/wal"
spec = "*"
backup_type_mask = 3855

[[component]]
name = "images"
logical_path = "Inventory\\\\db"

[[component.file]]
path = "/srv/inv/images"
spec = "*.png"

[[component.dependency]]
name = "db"
logical_path = "Inventory"

[[component.dependency]]
writer_id = "6c1b7a43-2f5e-4c9a-b7d1-3e8f0a9d5c21"
name = "app.db"
logical_path = "sqlite"

[[exclude]]
path = "/srv/inv"
spec = "*.tmp"
recursive = true

[events]
timeout = 20
user = "root"
retryable_exit_codes = [75, 111]
identify = "test -d /srv/inv"
freeze = { command = "inventory-ctl pause", timeout = 5 }
thaw = "inventory-ctl resume"
post_snapshot = ""
pre_restore = "systemctl stop inventory"
post_restore = "systemctl start inventory"
"""


def write(tmp_path: Path, text: str, name: str = "writer.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_key_reaches_the_writer_metadata(tmp_path: Path) -> None:
    manifest = express_manifest.load(str(write(tmp_path, EVERY_KEY)))
    class_id = uuid.uuid5(EXPRESS_NAMESPACE, "Inventory")
    assert manifest.class_id == str(class_id)
    assert manifest.instance_id == str(uuid.uuid5(class_id, "shop-1"))  # as vss.writer.Writer derives it
    assert (manifest.name, manifest.instance_name, manifest.freeze_timeout) == ("Inventory", "shop-1", 30.0)
    assert manifest.user == "root" and manifest.retryable_exit_codes == {75, 111}
    assert {e.value: (c.command, c.timeout) for e, c in manifest.commands.items()} == {
        "identify": ("test -d /srv/inv", 20.0), "freeze": ("inventory-ctl pause", 5.0),
        "thaw": ("inventory-ctl resume", 20.0), "pre_restore": ("systemctl stop inventory", 20.0),
        "post_restore": ("systemctl start inventory", 20.0)}  # an empty command is no command

    wmd = manifest.metadata()
    wmd.validate()
    assert WriterMetadata.from_xml(wmd.to_xml()) == wmd
    identity = wmd.identity
    assert (str(identity.writer_id), str(identity.instance_id)) == (manifest.class_id, manifest.instance_id)
    assert (identity.friendly_name, identity.instance_name) == ("Inventory", "shop-1")
    assert (identity.usage, identity.data_source) == (UsageType.SYSTEM_SERVICE, SourceType.NONTRANSACTION_DB)
    schema = BackupSchema.DIFFERENTIAL | BackupSchema.INCREMENTAL | BackupSchema.TIMESTAMPED
    assert wmd.backup_schema == schema
    db, images = wmd.components
    assert (db.type, db.logical_path, db.name, db.caption) == (ComponentType.DATABASE, "Inventory", "db",
                                                               "the database")
    assert (db.selectable_for_backup, db.selectable_for_restore, db.notify_on_backup_complete,
            db.restore_metadata) == (True, False, True, True)
    [data] = db.database_files
    assert (data.path, data.filespec, data.recursive, data.alternate_path) == ("/srv/inv/db", "*.db", True,
                                                                               "/srv/inv/replica")
    assert data.backup_type_mask == (FileSpecBackupType.FULL_BACKUP_REQUIRED
                                     | FileSpecBackupType.ALL_SNAPSHOT_REQUIRED)
    [wal] = db.log_files
    assert (wal.path, wal.filespec, wal.recursive, int(wal.backup_type_mask)) == ("/srv/inv/wal", "*", False,
                                                                                  3855)
    assert images.type is ComponentType.FILEGROUP and images.full_path == "Inventory\\db\\images"
    assert images.selectable_for_backup and images.selectable_for_restore  # the defaults
    assert [(f.path, f.filespec) for f in images.files] == [("/srv/inv/images", "*.png")]
    assert wmd.subcomponents(db) == [images]
    own, other = images.dependencies
    assert (str(own.writer_id), own.logical_path, own.component_name) == (manifest.class_id, "Inventory",
                                                                          "db")
    assert str(other.writer_id) == "6c1b7a43-2f5e-4c9a-b7d1-3e8f0a9d5c21"
    [excluded] = wmd.excluded_files
    assert (excluded.path, excluded.filespec, excluded.recursive) == ("/srv/inv", "*.tmp", True)
    method = wmd.restore_method
    assert (method.method, method.service, method.user_procedure, method.writer_restore,
            method.reboot_required) == (RestoreMethodType.RESTORE_IF_CAN_REPLACE, "inventory",
                                        "see the runbook", WriterRestoreCondition.ALWAYS, False)
    [mapping] = wmd.alternate_location_mappings
    assert (mapping.path, mapping.alternate_path) == ("/srv/inv/db", "/srv/inv/restored")
    assert manifest.metadata() is not manifest.metadata()  # each Identify gets its own copy

    summary = manifest.summary()
    assert summary["events"]["freeze"] == {"command": "inventory-ctl pause", "timeout": 5.0}
    assert WriterMetadata.from_dict(summary["metadata"]) == wmd


def test_ids_given_are_kept_and_the_smallest_manifest_has_defaults(tmp_path: Path) -> None:
    given = express_manifest.load(str(write(tmp_path, """
[writer]
name = "x"
class_id = "0F2D9A6E-8C7B-4B4A-9D0E-4A5F3C2B1A00"
instance_id = "7e57c0de-0000-4000-8000-000000000001"
""")))
    assert given.class_id == "0f2d9a6e-8c7b-4b4a-9d0e-4a5f3c2b1a00"
    assert given.instance_id == "7e57c0de-0000-4000-8000-000000000001"
    least = express_manifest.load(str(write(tmp_path, '[writer]\nname = "x"\n', "least.toml")))
    assert least.class_id == str(uuid.uuid5(EXPRESS_NAMESPACE, "x"))
    assert least.instance_id == str(uuid.uuid5(uuid.UUID(least.class_id), ""))
    assert least.commands == {} and least.user is None and least.retryable_exit_codes == {75}
    assert least.freeze_timeout == 60.0 and least.metadata().components == []
    assert least.usage is UsageType.USER_DATA and least.data_source is SourceType.OTHER


def test_the_shipped_postgresql_manifest() -> None:
    shipped = express_manifest.shipped()
    assert set(shipped) >= {"postgresql"}
    manifest = express_manifest.load(shipped["postgresql"])
    assert manifest.name == "PostgreSQL" and manifest.user == "postgres"
    assert set(manifest.commands) == {Event.FREEZE}
    assert "CHECKPOINT" in manifest.commands[Event.FREEZE].command
    wmd = manifest.metadata()
    [cluster] = wmd.components
    [spec] = cluster.database_files
    assert spec.recursive and spec.filespec == "*"
    assert {e.filespec for e in wmd.excluded_files} == {"postmaster.pid", "postmaster.opts"}
    assert all(e.path == spec.path for e in wmd.excluded_files)


BASE = '[writer]\nname = "w"\n'
COMPONENT = BASE + '[[component]]\nname = "c"\n[[component.file]]\npath = "/srv/c"\nspec = "*"\n'

# (manifest text, the key the error names, what it says)
MISTAKES = [
    ("[writer\nname = 1", "not valid TOML", "line 1"),
    ('[other]\nx = 1\n', "writer", "the table [writer] is required"),
    ('[writer]\ninstance_name = "a"\n', "writer", "the key 'name' is required"),
    ('[writer]\nname = ""\n', "writer.name", "must not be empty"),
    ('[writer]\nname = 7\n', "writer.name", "must be a string, not an integer"),
    ('colour = "blue"\n' + BASE, "colour", "unknown key (known here: component, events, exclude"),
    (BASE + 'nmae = "x"\n', "writer.nmae", "unknown key (known here: backup_schema, class_id"),
    ('[writer]\nname = "w"\nfreeze_timout = 3\n', "writer.freeze_timout", "unknown key"),
    ('writer = "w"\n', "writer", "must be a table, not a string"),
    (BASE + 'class_id = "not-a-uuid"\n', "writer.class_id", "must be a UUID"),
    (BASE + 'usage = "USERDATA"\n', "writer.usage", "must be one of 'UNDEFINED'"),
    (BASE + 'freeze_timeout = 0\n', "writer.freeze_timeout", "between 0.05 and 3600 seconds, not 0"),
    (BASE + 'backup_schema = ["fast"]\n', "writer.backup_schema", "'fast' is not one of differential"),
    (BASE + 'backup_schema = 1048576\n', "writer.backup_schema", "has bits that mean nothing here"),
    (BASE + '[component]\nname = "c"\n', "component", "must be an array of tables ([[component]])"),
    (BASE + '[[component]]\ncaption = "c"\n', "component[1]", "the key 'name' is required"),
    (BASE + '[[component]]\nname = "a\\\\b"\n', "component[1].name", "contains a backslash"),
    (BASE + '[[component]]\nname = "c"\ntype = "table"\n', "component[1].type",
     "must be one of 'database', 'filegroup'"),
    (BASE + '[[component]]\nname = "c"\nspecs = 1\n', "component[1].specs", "unknown key"),
    (COMPONENT + 'recursive = "yes"\n', "component[1].file[1].recursive",
     "must be true or false, not a string"),
    (COMPONENT + 'recursiv = true\n', "component[1].file[1].recursiv", "unknown key"),
    (BASE + '[[component]]\nname = "c"\n[[component.file]]\npath = "srv/c"\nspec = "*"\n',
     "component[1].file[1].path", "path is not absolute"),
    (BASE + '[[component]]\nname = "c"\n[[component.file]]\npath = "/srv/../etc"\nspec = "*"\n',
     "component[1].file[1].path", "'..' component"),
    (BASE + '[[component]]\nname = "c"\n[[component.file]]\npath = "/srv"\nspec = "a/b"\n',
     "component[1].file[1].spec", "contains '/'"),
    (BASE + '[[component]]\nname = "c"\n[[component.file]]\npath = "/srv"\n',
     "component[1].file[1]", "the key 'spec' is required"),
    (COMPONENT + 'backup_type_mask = ["EVERYTHING"]\n', "component[1].file[1].backup_type_mask",
     "'EVERYTHING' is not one of FULL_BACKUP_REQUIRED"),
    (COMPONENT + '[[component.log_file]]\npath = "/srv/l"\nspec = "*"\n', "component[1].log_file[1]",
     'log files belong to database components (type = "database")'),
    (COMPONENT + '[[component]]\nname = "c"\n', "component[2]", "duplicate component 'c'"),
    (COMPONENT + '[[component.dependency]]\nlogical_path = "x"\n', "component[1].dependency[1]",
     "the key 'name' is required"),
    (COMPONENT + '[[component.dependency]]\nname = "c"\n', "component[1].dependency[1]", "depends on itself"),
    (BASE + '[[exclude]]\npath = "/srv"\n', "exclude[1]", "the key 'spec' is required"),
    (BASE + '[restore_method]\nmethod = "REPLACE"\n', "restore_method.method",
     "must be one of 'UNDEFINED', 'RESTORE_IF_NOT_THERE'"),
    (BASE + '[[restore_method.alternate_location]]\npath = "/a"\nspec = "*"\n',
     "restore_method.alternate_location[1]", "the key 'destination' is required"),
    (BASE + '[events]\nfroze = "sync"\n', "events.froze", "unknown key (known here: abort, backup_complete"),
    (BASE + '[events]\nfreeze = 5\n', "events.freeze", "must be a string, not an integer"),
    (BASE + '[events]\nfreeze = { timeout = 5 }\n', "events.freeze", "the key 'command' is required"),
    (BASE + '[events]\nfreeze = { command = "x", timeout = -1 }\n', "events.freeze.timeout",
     "between 0.05 and 3600 seconds, not -1"),
    (BASE + '[events]\nfreeze = { command = "x", user = "root" }\n', "events.freeze.user", "unknown key"),
    (BASE + '[events]\ntimeout = "60"\n', "events.timeout", "must be a number of seconds, not a string"),
    (BASE + '[events]\ntimeout = 7200\n', "events.timeout", "between 0.05 and 3600 seconds, not 7200"),
    (BASE + '[events]\nuser = "no-such-user-here"\n', "events.user", "there is no user 'no-such-user-here'"),
    (BASE + '[events]\nretryable_exit_codes = [0]\n', "events.retryable_exit_codes",
     "0 is not an exit code from 1 to 255"),
    (BASE + '[events]\nretryable_exit_codes = 75\n', "events.retryable_exit_codes",
     "must be an array of exit codes"),
]


@pytest.mark.parametrize(("text", "key", "problem"), MISTAKES, ids=[m[1] + ":" + m[2][:24] for m in MISTAKES])
def test_each_mistake_names_the_file_the_key_and_the_problem(tmp_path: Path, text: str, key: str,
                                                              problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ManifestError) as caught:
        express_manifest.load(str(path))
    message = str(caught.value)
    assert message.startswith(f"writer manifest {path}: {key}"), message
    assert problem in message, message


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=f"writer manifest {tmp_path}/none.toml: cannot read it: "
                                            "No such file or directory"):
        express_manifest.load(str(tmp_path / "none.toml"))
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'[writer]\nname = "\xff"\n')
    with pytest.raises(ManifestError, match="not UTF-8 text"):
        express_manifest.load(str(binary))


def test_the_cli_refuses_a_bad_manifest_before_connecting(tmp_path: Path) -> None:
    bad = write(tmp_path, COMPONENT + "recursiv = true\n")
    state = {"SHADOWFS_STATE": str(tmp_path / "no-daemon-here")}
    env = {**os.environ, **state}
    result = subprocess.run(SHADOWFS + ["writer", "run", "--manifest", str(bad)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == EXIT_REFUSED
    assert result.stderr == (f"shadowfs: writer manifest {bad}: component[1].file[1].recursiv: unknown key "
                             "(known here: alternate_path, backup_type_mask, path, recursive, spec)\n")
    result = subprocess.run(SHADOWFS + ["writer", "run", "--manifest", str(bad), "--json"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert json.loads(result.stdout)["kind"] == "bad_manifest" and result.returncode == EXIT_REFUSED

    good = write(tmp_path, EVERY_KEY, "good.toml")
    result = subprocess.run(SHADOWFS + ["writer", "run", "--manifest", str(good), "--check", "--json"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["writer_name"] == "Inventory"
    listed = subprocess.run(SHADOWFS + ["writer", "manifests", "--json"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=True)
    assert {m["name"]: m["path"] for m in json.loads(listed.stdout)} == express_manifest.shipped()
