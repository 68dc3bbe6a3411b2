"""A test writer process: logs every event it gets, and can hang, die or veto at a chosen event.

    python -m tests.support.writers.eventlog_writer --state DIR --log FILE --name NAME --files DIR
        [--instance-name X] [--hang-at EVENT] [--die-at EVENT] [--veto-at EVENT] [--freeze-timeout S]

It declares one file-group component `files` (logical path `eventlog`) over
`--files` (recursive), with the backup schema for full, incremental,
differential, copy and timestamps. At PostSnapshot it sets the backup stamp
`stamp-after-<previous>` and adds a differenced-files spec and a partial file;
at PreRestore it sets a directed target. Each event is one JSON line in the log:
{"pid", "name", "event", "session", "t", "state": extra facts}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from typing import Any

import trio

from shadowfs.documents import BackupSchema, ComponentType, RestoreMethodType, WriterMetadata
from shadowfs.vss.writer import EventContext, Writer

CLASS_ID = "0f2d9a6e-8c7b-4b4a-9d0e-4a5f3c2b1a00"


class EventLogWriter(Writer):
    class_id = CLASS_ID
    writer_name = "eventlog"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(instance_name=args.instance_name or args.name, writer_name=args.name,
                         freeze_timeout=args.freeze_timeout)
        self.args = args
        self.frozen = False

    def log(self, event: str, ctx: EventContext | None = None, **extra: Any) -> None:
        record = {"pid": os.getpid(), "name": self.args.name, "event": event, "t": time.time(),
                  "session": ctx.session if ctx else None, **extra}
        with open(self.args.log, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    async def behave(self, event: str, ctx: EventContext) -> bool:
        self.log(event, ctx, selected=[c.name for c in ctx.selected()], backup_type=ctx.backup_type.value,
                 context=ctx.context.value, frozen=self.frozen)
        if self.args.die_at == event:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.args.hang_at == event:
            await trio.sleep_forever()
        return self.args.veto_at != event

    async def on_identify(self, metadata: WriterMetadata) -> None:
        self.log("identify")
        metadata.set_backup_schema(BackupSchema.DIFFERENTIAL | BackupSchema.INCREMENTAL | BackupSchema.COPY
                                   | BackupSchema.TIMESTAMPED | BackupSchema.LAST_MODIFY
                                   | BackupSchema.WRITER_SUPPORTS_NEW_TARGET)
        metadata.add_component(ComponentType.FILEGROUP, "eventlog", "files", caption="test files",
                               selectable_for_backup=True, selectable_for_restore=True)
        metadata.add_files("eventlog", "files", self.args.files, "*", recursive=True)
        metadata.add_exclude_files(self.args.files, "*.tmp", recursive=True)
        metadata.set_restore_method(RestoreMethodType.RESTORE_IF_CAN_REPLACE)
        if self.args.die_at == "identify":
            os.kill(os.getpid(), signal.SIGKILL)

    async def on_prepare_backup(self, ctx: EventContext) -> bool:
        for component in ctx.selected():
            self.log("previous_stamp", ctx, stamp=component.previous_backup_stamp)
        return await self.behave("prepare_backup", ctx)

    async def on_prepare_snapshot(self, ctx: EventContext) -> bool:
        return await self.behave("prepare_snapshot", ctx)

    async def on_freeze(self, ctx: EventContext) -> bool:
        ok = await self.behave("freeze", ctx)
        self.frozen = ok
        return ok

    async def on_thaw(self, ctx: EventContext) -> bool:
        self.frozen = False
        return await self.behave("thaw", ctx)

    async def on_post_snapshot(self, ctx: EventContext) -> bool:
        for component in ctx.selected():
            component.set_backup_stamp(f"stamp-after-{component.previous_backup_stamp or 'none'}")
            component.add_differenced_files_by_last_modify_time(self.args.files, "*.log", False, 0)
            component.add_partial_file(self.args.files, "big.bin", "0:10,100:5")
        return await self.behave("post_snapshot", ctx)

    async def on_abort(self, ctx: EventContext) -> bool:
        self.frozen = False
        self.log("abort", ctx)
        return True

    async def on_backup_complete(self, ctx: EventContext) -> bool:
        self.log("backup_complete_succeeded", ctx,
                 succeeded={c.name: c.backup_succeeded for c in ctx.selected()})
        return await self.behave("backup_complete", ctx)

    async def on_backup_shutdown(self, ctx: EventContext) -> bool:
        return await self.behave("backup_shutdown", ctx)

    async def on_pre_restore(self, ctx: EventContext) -> bool:
        for component in ctx.selected():
            self.log("restore_component", ctx, additional=component.additional_restores,
                     new_targets=[t.alternate_path for t in component.new_targets],
                     stamp=component.backup_stamp)
            files = self.args.files
            component.add_directed_target(files, "big.bin", "0:10", files, "big.bin", "0:10")
        return await self.behave("pre_restore", ctx)

    async def on_post_restore(self, ctx: EventContext) -> bool:
        return await self.behave("post_restore", ctx)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--files", required=True)
    parser.add_argument("--instance-name")
    parser.add_argument("--hang-at")
    parser.add_argument("--die-at")
    parser.add_argument("--veto-at")
    parser.add_argument("--freeze-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s writer {args.name}: %(message)s")
    writer = EventLogWriter(args)
    try:
        writer.main(args.state)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
