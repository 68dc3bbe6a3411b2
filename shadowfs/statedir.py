"""The state directory: where it is, `volumes.json`, validation of names and paths, the daemon lock.

One job: decide what a volume may be and remember the volumes durably. Nothing
here starts processes or talks to sockets; the daemon calls in here and sends
a `ConfigError` (`shadowfs.errors`, re-exported here) back as an error reply of
kind "invalid". `is_within` and `utc_now` live here, low enough for every
module that needs them.

Layout of a state directory:

    <state>/daemon.lock             flock held by the running daemon; holds its pid
    <state>/daemon.sock             the CLI socket (mode 0660)
    <state>/volumes.json            {"version", "next_index", "volumes": [...]}
    <state>/volumes/<name>/diffarea the volume's LMDB diff area

Invariants:
- `volumes.json` is replaced atomically (temporary file, fsync, rename, fsync of
  the directory): a crash leaves the old table or the new one, never a mix.
- A volume index is in 1..4095 and never reused: `next_index` only grows.
- Backing directories are stored as absolute real paths; no backing directory
  is inside or contains another, none is `/`, none contains the state
  directory or the mount root, and each lies on a filesystem that
  `syscalls.check_backing_fs` accepts.
- A mount path is absolute, and lies inside no other volume's backing directory
  or mount, and inside no part of the snapshot browser.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from shadowfs.errors import ConfigError, DaemonRunning
from shadowfs.linux import syscalls
from shadowfs.linux.atomicfile import write_atomic

DEFAULT_STATE_DIR = "/var/lib/shadowfs"
STATE_ENV = "SHADOWFS_STATE"
MOUNT_ROOT_ENV = "SHADOWFS_MOUNT_ROOT"
VOLUMES_FILE = "volumes.json"
LOCK_FILE = "daemon.lock"
SOCKET_FILE = "daemon.sock"
TABLE_VERSION = 1
MAX_INDEX = 4095
MAX_NAME = 64
MIN_DIFF_AREA = 1 << 20
DEFAULT_DIFF_AREA_FLOOR = 1 << 30
DEFAULT_DIFF_AREA_FRACTION = 0.10

RESERVED_NAMES = frozenset({"by-time", "by-volume"})
_NAME_CHARS = re.compile(r"[A-Za-z0-9._-]+")
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([KMGTP](?:I?B)?|B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


# --- locations ----------------------------------------------------------------------------------


def resolve_state_dir(arg: str | None = None) -> str:
    """`--state`, else $SHADOWFS_STATE, else /var/lib/shadowfs; made absolute."""
    chosen = arg or os.environ.get(STATE_ENV) or DEFAULT_STATE_DIR
    return os.path.abspath(chosen)


def resolve_mount_root(arg: str | None, state_dir: str) -> str:
    """`--mount-root`, else $SHADOWFS_MOUNT_ROOT, else <state>/mnt; made absolute."""
    chosen = arg or os.environ.get(MOUNT_ROOT_ENV) or os.path.join(state_dir, "mnt")
    return os.path.abspath(chosen)


def socket_path(state_dir: str) -> str:
    return os.path.join(state_dir, SOCKET_FILE)


def volume_dir(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, "volumes", name)


def diff_area_path(state_dir: str, name: str) -> str:
    return os.path.join(volume_dir(state_dir, name), "diffarea")


def protection_path(state_dir: str, name: str) -> str:
    """The volume's protection record (`live.protection`): since when, and is it still protected."""
    return os.path.join(volume_dir(state_dir, name), "protection")


def mount_socket_name(state_dir: str, name: str) -> str:
    """The name of the abstract Unix socket (the address is a NUL byte, then this) on which the
    volume's mount process waits for a daemon.

    Abstract (no file, so no path length limit and nothing left behind by a killed process),
    derived from the state directory and volume name so that each daemon finds its own."""
    digest = hashlib.sha256(f"{os.path.abspath(state_dir)}\0{name}".encode()).hexdigest()[:40]
    return f"shadowfs-mount-{digest}"


def browser_mount(mount_root: str) -> str:
    return os.path.join(mount_root, "snapshots")


def snapshot_path(mount_root: str, set_id: str, volume: str) -> str:
    return os.path.join(browser_mount(mount_root), set_id, volume)


# --- sizes --------------------------------------------------------------------------------------


def parse_size(text: str | int) -> int:
    """Bytes from "1048576", "512M", "10G", "1.5G", "64KiB"; binary units. ConfigError if bad."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE.fullmatch(str(text).strip())
        if not match:
            raise ConfigError(f"invalid size {text!r} (expected a number of bytes or e.g. 512M, 10G, 1.5T)")
        unit = (match.group(2) or "")[:1].upper().replace("B", "")
        value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ConfigError(f"invalid size {text!r}: must be more than 0 bytes")
    return value


def format_size(value: float) -> str:
    """Short human form with binary units, the one every size the CLI prints has: 1536 -> "1.5K",
    10737418240 -> "10G", 12 -> "12B"."""
    for unit in ("P", "T", "G", "M", "K"):
        scale = _UNITS[unit]
        if value >= scale:
            shown = f"{value / scale:.1f}".removesuffix(".0")
            return f"{shown}{unit}"
    return f"{int(value)}B"


def check_diff_area_size(value: int) -> int:
    if value < MIN_DIFF_AREA:
        raise ConfigError(f"maximum diff area size {value} bytes is too small "
                          f"(at least {format_size(MIN_DIFF_AREA)})")
    return value


def default_diff_area_size(backing: str) -> int:
    """10% of the backing filesystem's size, but at least 1 GiB."""
    stats = os.statvfs(backing)
    fs_size = stats.f_blocks * stats.f_frsize
    return max(int(fs_size * DEFAULT_DIFF_AREA_FRACTION), DEFAULT_DIFF_AREA_FLOOR)


# --- names and paths ----------------------------------------------------------------------------


def validate_volume_name(name: str) -> str:
    if not isinstance(name, str) or name == "":
        raise ConfigError("volume name must not be empty")
    if "/" in name:
        raise ConfigError(f"invalid volume name {name!r}: must not contain '/'")
    if "\0" in name:
        raise ConfigError(f"invalid volume name {name!r}: must not contain NUL")
    if name in (".", ".."):
        raise ConfigError(f"invalid volume name {name!r}")
    if name in RESERVED_NAMES:
        raise ConfigError(f"invalid volume name {name!r}: reserved by the snapshot browser")
    if len(name) > MAX_NAME:
        raise ConfigError(f"invalid volume name {name[:20]!r}...: longer than {MAX_NAME} characters")
    if not _NAME_CHARS.fullmatch(name):
        raise ConfigError(f"invalid volume name {name!r}: only letters, digits, '.', '_' and '-' are allowed")
    return name


def is_within(path: str, root: str) -> bool:
    """True if `path` is `root` or below it (both absolute, normalised); a plain string test, no
    file system access."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def real_backing_dir(path: str) -> str:
    """The absolute real path of an existing directory that may be protected, or ConfigError."""
    if not path:
        raise ConfigError("backing directory must not be empty")
    real = os.path.realpath(path)
    if not os.path.exists(real):
        raise ConfigError(f"backing directory {path} does not exist")
    if not os.path.isdir(real):
        raise ConfigError(f"backing directory {path} is not a directory")
    if real == "/":
        raise ConfigError("the root directory / cannot be a backing directory")
    return real


@dataclasses.dataclass(frozen=True)
class Volume:
    name: str
    index: int
    backing: str
    mount: str
    max_diff_area_bytes: int
    created: str
    blocks: str = "state"  # where the diff area's blocks.dat is: "state" (beside it) or "volume"

    @property
    def in_place(self) -> bool:
        return self.mount == self.backing

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Volume:
        try:
            return cls(name=str(obj["name"]), index=int(obj["index"]), backing=str(obj["backing"]),
                       mount=str(obj["mount"]), max_diff_area_bytes=int(obj["max_diff_area_bytes"]),
                       created=str(obj["created"]), blocks=_blocks_place(obj.get("blocks", "state")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed volume entry in {VOLUMES_FILE}: {obj!r}") from exc


def utc_now(timespec: Literal["seconds", "microseconds"] = "seconds") -> str:
    """The time now, UTC ISO 8601 with a 'Z': `2026-11-21T20:43:52Z` (volumes, snapshot sets, writers'
    records; the requester reads it back to the second), or with `timespec="microseconds"`
    `2026-11-21T20:43:52.123456Z` (an image's `created`, which orders images of the same second)."""
    return datetime.now(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


# --- the volume table ---------------------------------------------------------------------------


def _blocks_place(value: object) -> str:
    if value not in ("state", "volume"):
        raise ValueError(f"blocks must be 'state' or 'volume', not {value!r}")
    return str(value)


class VolumeTable:
    """The volumes of one state directory, as stored in `volumes.json`."""

    def __init__(self, state_dir: str, mount_root: str, volumes: Iterable[Volume] = (), next_index: int = 1):
        self.state_dir = state_dir
        self.mount_root = mount_root
        self.volumes: dict[str, Volume] = {v.name: v for v in volumes}
        self.next_index = next_index

    @property
    def path(self) -> str:
        return os.path.join(self.state_dir, VOLUMES_FILE)

    @classmethod
    def load(cls, state_dir: str, mount_root: str) -> VolumeTable:
        path = os.path.join(state_dir, VOLUMES_FILE)
        try:
            with open(path, encoding="utf-8") as file:
                obj = json.load(file)
        except FileNotFoundError:
            return cls(state_dir, mount_root)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        if not isinstance(obj, dict) or obj.get("version") != TABLE_VERSION:
            raise ConfigError(f"{path}: unknown format (expected version {TABLE_VERSION})")
        volumes = [Volume.from_json(entry) for entry in obj.get("volumes", [])]
        next_index = int(obj.get("next_index", 1))
        next_index = max([next_index] + [v.index + 1 for v in volumes])
        return cls(state_dir, mount_root, volumes, next_index)

    def save(self) -> None:
        obj = {"version": TABLE_VERSION, "next_index": self.next_index,
               "volumes": [v.to_json() for v in sorted(self.volumes.values(), key=lambda v: v.index)]}
        write_json_atomic(self.path, obj)

    def get(self, name: str) -> Volume:
        try:
            return self.volumes[name]
        except KeyError:
            raise ConfigError(f"unknown volume {name!r}") from None

    def new_volume(self, name: str, backing: str, mount: str | None,
                   max_diff_area_bytes: int | None, blocks: str | None = None) -> Volume:
        """Validate everything about a new volume and return it (not yet added or saved).

        `blocks`: where the diff area keeps its block bytes, "volume" (`<backing>/.shadowfs/`, the
        volume's own filesystem, where a capture can be a reflink) or "state" (beside the diff area
        in the state directory); None: "volume" when the state directory is on another filesystem.
        """
        validate_volume_name(name)
        if name in self.volumes:
            raise ConfigError(f"volume {name!r} already exists")
        if self.next_index > MAX_INDEX:
            raise ConfigError(f"no volume index left (all {MAX_INDEX} have been used "
                              "on this state directory)")
        real = real_backing_dir(backing)
        self._check_backing_placement(real)
        try:
            syscalls.check_backing_fs(real)
        except ValueError as exc:
            raise ConfigError(f"backing directory {exc}") from exc
        mount_path = real if mount is None else self._mount_path(mount)
        self._check_mount_placement(name, real, mount_path)
        size = default_diff_area_size(real) if max_diff_area_bytes is None else int(max_diff_area_bytes)
        check_diff_area_size(size)
        if blocks is None:
            blocks = "volume" if os.stat(real).st_dev != os.stat(self.state_dir).st_dev else "state"
        return Volume(name, self.next_index, real, mount_path, size, utc_now(), _blocks_place(blocks))

    def add(self, volume: Volume) -> None:
        self.volumes[volume.name] = volume
        self.next_index = max(self.next_index, volume.index + 1)
        self.save()

    def remove(self, name: str) -> Volume:
        volume = self.get(name)
        del self.volumes[name]
        self.save()
        return volume

    def check_layout(self) -> None:
        """Refuse a state directory or mount root inside a protected tree (checked at daemon start)."""
        state = os.path.realpath(self.state_dir)
        mount_root = os.path.realpath(self.mount_root)
        for volume in self.volumes.values():
            for what, path in (("state directory", state), ("mount root", mount_root)):
                for where in {volume.backing, volume.mount}:
                    if is_within(path, where):
                        raise ConfigError(f"the {what} {path} is inside volume {volume.name!r} ({where}); "
                                          "it cannot be inside a protected tree")

    def _check_backing_placement(self, real: str) -> None:
        state = os.path.realpath(self.state_dir)
        if is_within(state, real):
            raise ConfigError(f"backing directory {real} contains the state directory {state}; "
                              "the state directory cannot be inside a protected tree")
        mount_root = os.path.realpath(self.mount_root)
        if is_within(mount_root, real):
            raise ConfigError(f"backing directory {real} contains the mount root {mount_root}")
        if is_within(real, browser_mount(mount_root)):
            raise ConfigError(f"backing directory {real} is inside the snapshot browser")
        for other in self.volumes.values():
            if is_within(real, other.backing):
                raise ConfigError(f"backing directory {real} is inside volume {other.name!r} "
                                  f"({other.backing})")
            if is_within(other.backing, real):
                raise ConfigError(f"backing directory {real} contains volume {other.name!r} "
                                  f"({other.backing})")
            if not other.in_place and is_within(real, other.mount):
                raise ConfigError(f"backing directory {real} is inside the mount of volume {other.name!r} "
                                  f"({other.mount})")

    def _mount_path(self, mount: str) -> str:
        if not mount:
            raise ConfigError("mount path must not be empty")
        path = os.path.abspath(mount)
        if os.path.exists(path):
            if not os.path.isdir(path):
                raise ConfigError(f"mount path {mount} exists and is not a directory")
            return os.path.realpath(path)
        return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))

    def _check_mount_placement(self, name: str, backing: str, mount: str) -> None:
        if mount == "/":
            raise ConfigError("cannot mount a volume over /")
        if mount != backing and is_within(mount, backing):
            raise ConfigError(f"mount path {mount} is inside the volume's own backing directory {backing}")
        if mount != backing and is_within(backing, mount):
            raise ConfigError(f"mount path {mount} contains the volume's own backing directory {backing}")
        mount_root = os.path.realpath(self.mount_root)
        if is_within(mount, browser_mount(mount_root)) or is_within(browser_mount(mount_root), mount):
            raise ConfigError(f"mount path {mount} overlaps the snapshot browser {browser_mount(mount_root)}")
        state = os.path.realpath(self.state_dir)
        if is_within(state, mount):
            raise ConfigError(f"mount path {mount} contains the state directory {state}")
        for other in self.volumes.values():
            for what, path in (("mount", other.mount), ("backing directory", other.backing)):
                if is_within(mount, path) or is_within(path, mount):
                    raise ConfigError(f"mount path {mount} overlaps the {what} "
                                      f"of volume {other.name!r} ({path})")


def write_json_atomic(path: str, obj: Any) -> None:
    """Replace `path` with `obj` as JSON, atomically and durably."""
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def prepare_state_dir(state_dir: str) -> None:
    """Create the state directory (0711: traversable for the socket, not listable) and volumes/ (0700)."""
    os.makedirs(state_dir, mode=0o711, exist_ok=True)
    os.makedirs(os.path.join(state_dir, "volumes"), mode=0o700, exist_ok=True)


def remove_volume_dir(state_dir: str, name: str) -> None:
    """Delete `<state>/volumes/<name>` with its diff area; a missing one is fine."""
    validate_volume_name(name)
    try:
        shutil.rmtree(volume_dir(state_dir, name))
    except FileNotFoundError:
        pass


# --- the daemon lock ----------------------------------------------------------------------------


class DaemonLock:
    """`<state>/daemon.lock`, flock'ed exclusively for the life of the daemon; holds its pid."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, LOCK_FILE)
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            message = f"another shadowfs daemon is running on state {self.state_dir}{who}"
            raise DaemonRunning(message) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> DaemonLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def mount_process_pids(state_dir: str) -> list[int]:
    """Pids of the mount processes of `state_dir`'s volumes (they outlive the daemon), found by
    their command line: ``-m shadowfs.live.process ... --diff-area <state>/volumes/...``."""
    prefix = os.path.join(os.path.abspath(state_dir), "volumes", "").encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                args = cmdline.read().split(b"\0")
        except OSError:
            continue
        if b"shadowfs.live.process" in args and any(arg.startswith(prefix) for arg in args):
            found.append(int(entry))
    return found


def daemon_holding_lock(state_dir: str) -> int | None:
    """The pid of a daemon that holds the lock of `state_dir` (running, perhaps not yet listening),
    0 if one holds it without a readable pid, None if no daemon runs there."""
    try:
        fd = os.open(os.path.join(state_dir, LOCK_FILE), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or 0
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
