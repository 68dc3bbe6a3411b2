"""A test writer process driven by a JSON file the test rewrites between jobs.

    python -m tests.support.writers.spec_writer --state DIR --config FILE --log FILE [--name NAME]

The config (read again at every event) says: "schema" (VSS_BS_* bits),
"components" ([{"logical_path", "name", "files": [{"path", "filespec",
"recursive", "alternate_path", "mask"}]}]), "excluded" ([{"path", "filespec",
"recursive"}]), "post_snapshot" ({component name: {"differenced": [[path,
filespec, recursive, time_ns]], "partial": [[path, filename, ranges]]}}) and
"pre_restore" ({component name: {"directed": [[src path, src name, src ranges,
dst path, dst name, dst ranges]]}}). Restore events are logged as JSON lines
({"event", "component", "additional", "new_targets"}).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shadowfs.documents import BackupSchema, ComponentType, FileSpecBackupType, RestoreTarget, WriterMetadata
from shadowfs.vss.writer import EventContext, Writer

CLASS_ID = "5a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"


class SpecWriter(Writer):
    class_id = CLASS_ID
    writer_name = "spec"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(instance_name=args.name, writer_name=args.name)
        self.args = args

    def config(self) -> dict[str, Any]:
        with open(self.args.config) as f:
            return dict(json.load(f))

    def log(self, **record: Any) -> None:
        with open(self.args.log, "a") as f:
            f.write(json.dumps(record) + "\n")

    async def on_identify(self, metadata: WriterMetadata) -> None:
        config = self.config()
        metadata.set_backup_schema(BackupSchema(config.get("schema", 0)))
        for component in config["components"]:
            metadata.add_component(ComponentType.FILEGROUP, component.get("logical_path", ""),
                                   component["name"], selectable_for_backup=True, selectable_for_restore=True)
            for spec in component["files"]:
                metadata.add_files(component.get("logical_path", ""), component["name"], spec["path"],
                                   spec["filespec"], recursive=spec.get("recursive", False),
                                   alternate_path=spec.get("alternate_path", ""),
                                   backup_type_mask=FileSpecBackupType(spec.get("mask", 0xF0F)))
        for spec in config.get("excluded", []):
            metadata.add_exclude_files(spec["path"], spec["filespec"], spec.get("recursive", False))

    async def on_post_snapshot(self, ctx: EventContext) -> bool:
        todo = self.config().get("post_snapshot", {})
        for component in ctx.selected():
            self.log(event="post_snapshot", component=component.name, stamp=component.previous_backup_stamp,
                     backup_type=ctx.backup_type.value)
            component.set_backup_stamp(f"stamp-{ctx.backup_type.value}")
            extra = todo.get(component.name, {})
            for path, filespec, recursive, when in extra.get("differenced", []):
                component.add_differenced_files_by_last_modify_time(path, filespec, recursive, when)
            for path, filename, ranges in extra.get("partial", []):
                component.add_partial_file(path, filename, ranges)
        return True

    async def on_pre_restore(self, ctx: EventContext) -> bool:
        todo = self.config().get("pre_restore", {})
        for component in ctx.selected():
            self.log(event="pre_restore", component=component.name, additional=component.additional_restores,
                     new_targets=[[t.path, t.alternate_path] for t in component.new_targets])
            for target in todo.get(component.name, {}).get("directed", []):
                component.add_directed_target(*target)
                component.set_restore_target(RestoreTarget.DIRECTED)
        return True

    async def on_post_restore(self, ctx: EventContext) -> bool:
        for component in ctx.selected():
            self.log(event="post_restore", component=component.name, additional=component.additional_restores)
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--name", default="spec")
    args = parser.parse_args(argv)
    try:
        SpecWriter(args).main(args.state)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
