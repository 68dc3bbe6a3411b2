"""Supervised child processes of the daemon: a volume's mount process, the snapshot browser.

One job: start a child (``python -m <module> --control-fd N ...``) over a
socketpair, or adopt one already running (a mount process that outlived the
daemon before this one, `adopt`), wait for its ``{"event": "ready"}``, keep
its control channel while it is ready, restart it with exponential backoff
when it dies, and stop it, or leave it running (`detach`), on request. What a
child is for (its arguments, the descriptors it inherits, what to do once it
is ready or after it died, its events) is the caller's: `Child` takes them as
arguments (`Launch`, `after_exit`, `on_ready`, `on_event`).

Invariants:
- `Child.channel` is set only while the process is ready; requests go to a
  child through it or not at all.
- Every child runs in its own session (a Ctrl-C reaches only the daemon) with
  this shadowfs package importable (`child_env`).
- A child is stopped in order: its `stop_request` if it has one, SIGTERM after
  STOP_TIMEOUT, then SIGKILL after another; a child of ours is always reaped;
  after it died, `after_exit` decides what happens to its mount (by default
  whatever is left mounted at its mount path is unmounted lazily: only a FUSE
  mount of type ``fuse.shadowfs``, `linux.mounts.unmount_if_ours`).
- A detached child is left running with nothing taken from it; its control
  channel is closed, which it survives (mount processes) or ends on (the
  browser, which is never detached). A child that `outlives_daemon` is also
  left running when supervision ends for any other reason than `stop` (the
  daemon failed): only a stop takes protection away.
- An adopted process is not our child: its end is seen through a pidfd.
- A child not ready within READY_TIMEOUT is terminated and restarted; the
  backoff (BACKOFF_MIN doubling up to BACKOFF_MAX) starts again after a run
  that lasted STABLE_AFTER seconds.
- `Child.wait_first` reports the outcome of the first start only (ChildFailed
  unless it became ready).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

import shadowfs
from shadowfs.errors import ChildFailed, IpcError
from shadowfs.ipc import frames
from shadowfs.ipc.channel import Channel
from shadowfs.ipc.messages import ChildDescription
from shadowfs.linux import mounts

log = logging.getLogger(__name__)

READY_TIMEOUT = 30.0
CALL_TIMEOUT = 30.0  # a request to a ready child
STOP_TIMEOUT = 10.0
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0


async def wait_any(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as one of the given waits returns."""
    async with trio.open_nursery() as nursery:
        async def one(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(one, wait)


def child_env() -> dict[str, str]:
    """The environment of children: ours, with this shadowfs package importable."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(shadowfs.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


ADOPT_TIMEOUT = 5.0


def connect_running(name: str) -> tuple[int, socket.socket] | None:
    """(pid, connected socket) of the process listening on abstract socket `name` as root or our
    own user (a mount process that outlived an earlier daemon), or None if none does."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(ADOPT_TIMEOUT)
    try:
        sock.connect(b"\0" + name.encode())
        pid, uid, _ = frames.peer_credentials(sock)
    except OSError:
        sock.close()
        return None
    if uid not in (0, os.getuid()):
        log.warning("@%s belongs to uid %d, not to this daemon's user; not adopting it", name, uid)
        sock.close()
        return None
    sock.setblocking(False)
    return pid, sock


class Process(Protocol):
    """What supervision needs of a process: ours (`trio.Process`) or adopted (`AdoptedProcess`)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> object: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class AdoptedProcess:
    """A running process that another daemon started: watched through a pidfd (not our child, so
    its exit status is unknown: `returncode` becomes -1 once it is gone)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.returncode: int | None = None

    async def wait(self) -> int:
        if self.returncode is None:
            await trio.lowlevel.wait_readable(self.pidfd)
            self.returncode = -1
            os.close(self.pidfd)
        return self.returncode

    def _signal(self, signum: int) -> None:
        if self.returncode is None:
            signal.pidfd_send_signal(self.pidfd, signum)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)


Launch = Callable[["Child"], tuple[list[str], list[int]]]
"""Extra arguments and descriptors to inherit for the next start of a child."""


class Child:
    """One supervised process: a volume's mount process or the browser.

    `run` starts it (or takes the adopted one), waits for its `ready` event, keeps
    `channel` set while it is ready, and restarts it with exponential backoff when
    it dies, until `stop` or `detach` is called.
    """

    def __init__(self, label: str, module: str, args: list[str], mount_path: str,
                 on_ready: Callable[[Child], Awaitable[None]] | None = None,
                 on_event: Callable[[Child, frames.Frame, list[int]], Awaitable[None]] | None = None,
                 *, launch: Launch | None = None,
                 on_ready_event: Callable[[Child, frames.Frame, list[int]], None] | None = None,
                 after_exit: Callable[[Child], None] | None = None,
                 stop_request: frames.Message | None = None, outlives_daemon: bool = False) -> None:
        self.label = label
        self.module = module
        self.args = args
        self.mount_path = mount_path
        self.on_ready = on_ready
        self.on_event = on_event
        self.launch = launch
        self.on_ready_event = on_ready_event
        self.after_exit = after_exit
        self.stop_request = stop_request
        self.outlives_daemon = outlives_daemon
        self.channel: Channel | None = None
        self.process: Process | None = None
        self.state = "starting"
        self.restarts = 0
        self.last_exit: int | None = None
        self.adopted = False
        self._adopt: tuple[AdoptedProcess, socket.socket] | None = None
        self._stop_requested = trio.Event()
        self._detach = False
        self._stopped = trio.Event()
        self._first_done = trio.Event()
        self._first_error: str | None = None

    def argv(self, control_fd: int, extra: list[str] = []) -> list[str]:  # noqa: B006 (never mutated)
        return [sys.executable, "-m", self.module, "--control-fd", str(control_fd), *self.args, *extra]

    def describe(self) -> ChildDescription:
        pid = self.process.pid if self.process is not None and self.process.returncode is None else None
        return {"state": self.state, "pid": pid, "restarts": self.restarts, "last_exit": self.last_exit}

    def adopt(self, pid: int, sock: socket.socket) -> None:
        """Before `run`: supervise running process `pid`, connected through `sock`, instead of
        starting one (it sends its ready event on `sock` like a new child)."""
        self._adopt = (AdoptedProcess(pid), sock)
        self.adopted = True

    async def wait_first(self) -> None:
        """Wait for the outcome of the first start; raise ChildFailed if it did not become ready."""
        await self._first_done.wait()
        if self._first_error is not None:
            raise ChildFailed(f"{self.label} {self._first_error}")

    async def stop(self) -> None:
        """Stop the process (and its mount) and stop supervising it."""
        self._stop_requested.set()
        await self._stopped.wait()

    async def detach(self) -> None:
        """Stop supervising; the process goes on (a mount process then waits for the next daemon)."""
        self._detach = True
        self._stop_requested.set()
        await self._stopped.wait()

    async def run(self) -> None:
        backoff = BACKOFF_MIN
        try:
            while not self._stop_requested.is_set():
                started = trio.current_time()
                reason = await self._run_once()
                if self._stop_requested.is_set():
                    break
                if trio.current_time() - started > STABLE_AFTER:
                    backoff = BACKOFF_MIN
                log.warning("%s %s; restarting in %.1f s", self.label, reason, backoff)
                self.state = "restarting"
                with trio.move_on_after(backoff):
                    await self._stop_requested.wait()
                backoff = min(backoff * 2, BACKOFF_MAX)
                self.restarts += 1
        finally:
            self.state = "detached" if self._detach else "stopped"
            self._note_first("was stopped before it was ready")
            self._stopped.set()

    def _note_first(self, error: str | None) -> None:
        if not self._first_done.is_set():
            self._first_error = error
            self._first_done.set()

    async def _start(self) -> tuple[Process, socket.socket] | str:
        """The process to supervise and its control socket, or why none could be started."""
        if self._adopt is not None:
            adopted, self._adopt = self._adopt, None
            return adopted
        parent, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        extra, fds = self.launch(self) if self.launch is not None else ([], [])
        try:
            proc = await trio.lowlevel.open_process(
                self.argv(child_sock.fileno(), extra), pass_fds=(child_sock.fileno(), *fds),
                start_new_session=True, env=child_env())
        except OSError as exc:
            parent.close()
            self._note_first(f"could not be started: {exc}")
            return f"could not be started ({exc})"
        finally:
            child_sock.close()
        return proc, parent

    async def _run_once(self) -> str:
        """Run the process once; return why it ended (for the log)."""
        self.state = "starting"
        started = await self._start()
        if isinstance(started, str):
            return started
        proc, sock = started
        self.process = proc
        channel = Channel.from_socket(sock)
        try:
            return await self._supervise(proc, channel)
        finally:
            self.channel = None
            channel.close()
            # a daemon that ends without stopping its children (it failed, it was cancelled) leaves a
            # child that outlives it running, as `detach` would
            left = self.outlives_daemon and proc.returncode is None and not self._stop_requested.is_set()
            if not self._detach and not left:
                with trio.CancelScope(shield=True):
                    await self._reap(proc)
                    self.last_exit = proc.returncode
                    await trio.to_thread.run_sync(self._after_exit)

    def _after_exit(self) -> None:
        if self.after_exit is not None:
            self.after_exit(self)
        else:
            mounts.unmount_if_ours(self.mount_path)

    async def _supervise(self, proc: Process, channel: Channel) -> str:
        ready = trio.Event()
        exited = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, proc, channel, ready)
            nursery.start_soon(self._watch_exit, proc, exited)
            with trio.move_on_after(READY_TIMEOUT):
                await wait_any(ready.wait, exited.wait, self._stop_requested.wait)
            if ready.is_set() and not exited.is_set():
                await self._became_ready(proc, channel)
                await wait_any(exited.wait, self._stop_requested.wait)
                reason = f"exited with status {proc.returncode}"
            elif exited.is_set():
                reason = f"exited with status {proc.returncode} before it was ready"
            elif self._stop_requested.is_set():
                reason = "was stopped before it was ready"
            else:
                reason = f"was not ready within {READY_TIMEOUT:g} s"
            self._note_first(reason)
            if self._detach:
                log.info("%s (pid %d) goes on without this daemon", self.label, proc.pid)
            elif not exited.is_set():
                await self._terminate(proc, channel, exited, ready.is_set())
            nursery.cancel_scope.cancel()
        return reason

    async def _became_ready(self, proc: Process, channel: Channel) -> None:
        self.channel = channel
        self.state = "running"
        log.info("%s is ready (pid %d%s)", self.label, proc.pid, ", adopted" if self.adopted else "")
        self._note_first(None)
        if self.on_ready is not None:
            try:
                await self.on_ready(self)
            except Exception as exc:
                log.error("%s: setting it up after start failed: %s", self.label, exc)

    async def _pump(self, proc: Process, channel: Channel, ready: trio.Event) -> None:
        async def on_event(event: frames.Frame, fds: list[int]) -> None:
            if event.get("event") == "ready":
                if self.on_ready_event is not None:
                    self.on_ready_event(self, event, fds)
                else:
                    frames.close_fds(fds)
                ready.set()
            elif self.on_event is not None:
                await self.on_event(self, event, fds)
            else:
                frames.close_fds(fds)
                log.info("%s: event %s", self.label, event)

        try:
            await channel.run(on_event=on_event)
        except frames.ProtocolError as exc:
            log.error("%s sent a malformed frame (%s); terminating it", self.label, exc)
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, frames.ChannelClosed):
            pass  # the process is gone or going: `_watch_exit` tells

    @staticmethod
    async def _watch_exit(proc: Process, exited: trio.Event) -> None:
        await proc.wait()
        exited.set()

    async def _terminate(self, proc: Process, channel: Channel, exited: trio.Event, ready: bool) -> None:
        if self.stop_request is not None and ready:
            with trio.move_on_after(STOP_TIMEOUT), contextlib.suppress(
                    IpcError, OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                await channel.call(self.stop_request, timeout=STOP_TIMEOUT)
                await exited.wait()
            if exited.is_set():
                return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        with trio.move_on_after(STOP_TIMEOUT):
            await exited.wait()
        if not exited.is_set():
            log.warning("%s did not stop within %g s; killing it", self.label, STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await exited.wait()

    @staticmethod
    async def _reap(proc: Process) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()


__all__ = ["CALL_TIMEOUT", "AdoptedProcess", "Child", "ChildFailed", "Launch", "child_env", "wait_any"]
