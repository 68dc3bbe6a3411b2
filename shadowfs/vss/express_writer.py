"""An express writer: a writer process driven by a manifest, running one shell command per event.

```
 shadowfs writer run --manifest FILE
   express_manifest.load ──▶ ExpressWriter (a vss.writer.Writer) ──register──▶ daemon.sock
     Identify          ──▶ [identify command] then the manifest's Writer Metadata Document
     any other event   ──▶ /bin/sh -c "<command>" in a session of its own, SHADOWFS_* in its environment
                            exit 0: ok · exit in retryable_exit_codes: retryable · other exit or signal:
                            non_retryable · still running at its timeout: process group killed, timeout
```

One job: run the commands a manifest (`vss.express_manifest`) gives for the
events the writer library dispatches (vss §2, §3), in their order, and turn
each outcome into the event's answer (vss §5.2). An event without a command
succeeds at once.

Invariants:
- A command never outlives its event: it runs as the leader of a new process
  group, and when its timeout passes (the manifest's, or the daemon's bound
  for the event if that is shorter) or its event is cancelled (Abort, the
  daemon gone, SIGINT/SIGTERM to the writer), the whole group is sent SIGKILL
  and the leader reaped before the event is answered. Processes a command
  leaves behind after exiting by itself (daemons it starts) are not touched.
- A frozen application is thawed: Abort runs the `abort` command, or, when
  the manifest has none and a Freeze command ran (whatever its outcome)
  without a Thaw since, the `thaw` command (with SHADOWFS_EVENT=abort); thaw
  commands must therefore be harmless when nothing is frozen.
- Output goes to an unnamed temporary file, not a pipe, so a background child
  holding the output open cannot keep an event from ending; the last lines are
  logged and the last one is the failure message.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import IO, Any

import trio

from shadowfs.documents import WriterFailure, WriterMetadata
from shadowfs.errors import ManifestError
from shadowfs.service.protocol import Event
from shadowfs.vss.express_manifest import EventCommand, ExpressManifest
from shadowfs.vss.writer import EventContext, Writer, serve_until_signalled

log = logging.getLogger(__name__)

SHELL = "/bin/sh"
OUTPUT_TAIL = 8192            # bytes of a command's output kept for the log and the message
OUTPUT_LINES = 20
MESSAGE_MAX = 400


@dataclass(frozen=True)
class Outcome:
    """How one command ended: its exit status (negative: killed by that signal), whether its timeout
    passed, and the end of what it printed."""

    returncode: int
    timed_out: bool
    output: list[str]
    pgid: int


class ExpressWriter(Writer):
    """A writer whose identity, metadata and event handling all come from a manifest."""

    def __init__(self, manifest: ExpressManifest) -> None:
        self.manifest = manifest
        self.usage_type = manifest.usage
        self.data_source = manifest.data_source
        super().__init__(instance_name=manifest.instance_name, instance_id=manifest.instance_id,
                         class_id=manifest.class_id, writer_name=manifest.name,
                         freeze_timeout=manifest.freeze_timeout)
        self._frozen_by_command = False

    # ---- Identify -----------------------------------------------------------------------------------

    async def metadata(self) -> WriterMetadata:
        command = self.manifest.commands.get(Event.IDENTIFY)
        if command is not None:
            outcome = await run_command(command, self._environment(Event.IDENTIFY, None, command.timeout),
                                        command.timeout, self.manifest.user)
            failure = self._failure(command, outcome, command.timeout)
            if failure is not None:
                raise IdentifyFailed(failure[1])
        return self.manifest.metadata()

    # ---- every other event --------------------------------------------------------------------------

    async def _event(self, ctx: EventContext, event: Event | None = None) -> bool:
        """Run the command of `event` (default: the context's own) for `ctx`; True when it succeeded."""
        command = self.manifest.commands.get(event or ctx.event)
        if command is None:
            return True
        timeout = min(command.timeout, ctx.timeout)
        outcome = await run_command(command, self._environment(ctx.event, ctx, timeout), timeout,
                                    self.manifest.user)
        failure = self._failure(command, outcome, timeout)
        if failure is None:
            return True
        ctx.set_writer_failure(*failure)
        return False

    async def on_prepare_backup(self, ctx: EventContext) -> bool:
        return await self._event(ctx)

    async def on_prepare_snapshot(self, ctx: EventContext) -> bool:
        return await self._event(ctx)

    async def on_freeze(self, ctx: EventContext) -> bool:
        # set before the command runs: a Freeze command that failed, timed out or was cancelled may
        # have frozen part of the application, so Abort thaws after any attempt
        self._frozen_by_command = Event.FREEZE in self.manifest.commands
        return await self._event(ctx)

    async def on_thaw(self, ctx: EventContext) -> bool:
        self._frozen_by_command = False
        return await self._event(ctx)

    async def on_post_snapshot(self, ctx: EventContext) -> bool:
        return await self._event(ctx)

    async def on_abort(self, ctx: EventContext) -> bool:
        frozen, self._frozen_by_command = self._frozen_by_command, False
        if Event.ABORT in self.manifest.commands:
            return await self._event(ctx)
        if frozen and Event.THAW in self.manifest.commands:
            log.info("writer %s: abort while frozen: running the thaw command", self.writer_name)
            return await self._event(ctx, Event.THAW)
        return True

    async def on_backup_complete(self, ctx: EventContext) -> bool:
        return await self._event(ctx)

    async def on_backup_shutdown(self, ctx: EventContext) -> bool:
        return await self._event(ctx)

    async def on_pre_restore(self, ctx: EventContext) -> bool:
        return await self._event(ctx)

    async def on_post_restore(self, ctx: EventContext) -> bool:
        return await self._event(ctx)

    # ---- commands -----------------------------------------------------------------------------------

    def _environment(self, event: Event, ctx: EventContext | None, timeout: float) -> dict[str, str]:
        """The writer's environment plus what the command may want to know of its event."""
        env = dict(os.environ)
        user = self.manifest.user
        if user is not None:
            entry = pwd.getpwnam(user)
            env.update(HOME=entry.pw_dir, USER=user, LOGNAME=user)
        components = [c.full_path for c in ctx.selected()] if ctx is not None else []
        env.update({
            "SHADOWFS_EVENT": event.value,
            "SHADOWFS_WRITER_NAME": self.writer_name,
            "SHADOWFS_INSTANCE_NAME": self.instance_name,
            "SHADOWFS_INSTANCE_ID": self.instance_id,
            "SHADOWFS_CLASS_ID": self.class_id,
            "SHADOWFS_MANIFEST": self.manifest.path,
            "SHADOWFS_TIMEOUT": f"{timeout:g}",
            "SHADOWFS_SESSION": ctx.session if ctx is not None else "",
            "SHADOWFS_SET_ID": ctx.set_id if ctx is not None else "",
            "SHADOWFS_CONTEXT": ctx.context.value if ctx is not None else "",
            "SHADOWFS_BACKUP_TYPE": ctx.backup_type.value if ctx is not None else "",
            "SHADOWFS_VOLUMES": "\n".join(ctx.volumes) if ctx is not None else "",
            "SHADOWFS_COMPONENTS": "\n".join(components),
            "SHADOWFS_ADDITIONAL_RESTORES": "1" if ctx is not None and any(
                c.additional_restores for c in ctx.selected()) else "0",
        })
        return env

    def _failure(self, command: EventCommand, outcome: Outcome, timeout: float
                 ) -> tuple[WriterFailure, str] | None:
        """The writer failure an outcome means (vss §5.2), or None when the command succeeded."""
        name = command.event.value
        for line in outcome.output:
            log.info("writer %s: %s: %s", self.writer_name, name, line)
        last = next((line for line in reversed(outcome.output) if line.strip()), "")
        said = f": {last.strip()}"[:MESSAGE_MAX] if last else ""
        if outcome.timed_out:
            return WriterFailure.TIMEOUT, (f"the {name} command did not finish within {timeout:g} s; "
                                           f"its process group {outcome.pgid} was killed")
        if outcome.returncode == 0:
            return None
        if outcome.returncode < 0:
            signame = signal.Signals(-outcome.returncode).name
            return WriterFailure.NON_RETRYABLE, f"the {name} command was killed by {signame}{said}"
        reason = (WriterFailure.RETRYABLE if outcome.returncode in self.manifest.retryable_exit_codes
                  else WriterFailure.NON_RETRYABLE)
        return reason, f"the {name} command exited {outcome.returncode}{said}"


class IdentifyFailed(Exception):
    """The identify command failed: the writer answers Identify with this failure."""


async def run_command(command: EventCommand, env: dict[str, str], timeout: float,
                      user: str | None) -> Outcome:
    """Run `command` with `/bin/sh -c` as a new process group; kill the group at `timeout` or when
    cancelled (the cancellation then goes on, once the leader is reaped)."""
    options: dict[str, Any] = {}
    if user is not None:
        entry = pwd.getpwnam(user)
        options = {"user": entry.pw_uid, "group": entry.pw_gid,
                   "extra_groups": os.getgrouplist(user, entry.pw_gid)}
    with tempfile.TemporaryFile() as output:
        process = await trio.lowlevel.open_process(
            [SHELL, "-c", command.command], stdin=subprocess.DEVNULL,
            stdout=output, stderr=output, env=env, cwd="/", start_new_session=True, **options)
        timed_out = False
        try:
            with trio.move_on_after(timeout) as scope:
                await process.wait()
            if scope.cancelled_caught:
                timed_out = True
                log.warning("%s command still running after %g s: killing process group %d",
                            command.event.value, timeout, process.pid)
        finally:
            if process.returncode is None:
                _kill_group(process.pid)
                with trio.CancelScope(shield=True):
                    await process.wait()
        returncode = process.returncode
        assert returncode is not None
        return Outcome(returncode, timed_out, _tail(output), process.pid)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _tail(output: IO[bytes]) -> list[str]:
    size = output.seek(0, os.SEEK_END)
    output.seek(max(0, size - OUTPUT_TAIL))
    lines = output.read().decode("utf-8", "replace").splitlines()
    if size > OUTPUT_TAIL:
        lines = lines[1:]  # the first line read may be cut
    return lines[-OUTPUT_LINES:]


# ---- the process ------------------------------------------------------------------------------------


def check_can_run(manifest: ExpressManifest) -> None:
    """Refuse, before connecting, what cannot work here: another user's commands without root."""
    user = manifest.user
    if user is not None and os.geteuid() != 0 and pwd.getpwnam(user).pw_uid != os.geteuid():
        raise ManifestError(f"writer manifest {manifest.path}: events.user: running commands as {user!r} "
                            "needs root")


def run(manifest: ExpressManifest, state_dir: str | None) -> int:
    """`shadowfs writer run`: serve events until SIGINT or SIGTERM; 0 when ended by one of them."""
    check_can_run(manifest)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    writer = ExpressWriter(manifest)
    log.info("express writer %s from %s: commands for %s", manifest.name, manifest.path,
             ", ".join(e.value for e in manifest.commands) or "no event")
    trio.run(serve_until_signalled, writer, state_dir)
    return 0


