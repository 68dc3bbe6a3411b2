"""The daemon's own requests, checked field by field into their `ipc.messages` types.

One job: turn a frame from the CLI socket into the typed request the daemon
carries out (`volume_add_request`, ...), or refuse it with a `RequestError`
naming the field; and build the `volume` reply from a table entry.
"""

from __future__ import annotations

from shadowfs import statedir
from shadowfs.ipc import frames
from shadowfs.ipc.frames import Frame
from shadowfs.ipc.messages import (
    KeepCounts,
    ShutdownRequest,
    SnapshotDamageRequest,
    SnapshotDeleteRequest,
    SnapshotExposeRequest,
    SnapshotHoldRequest,
    SnapshotPruneRequest,
    SnapshotUnexposeRequest,
    VolumeAddRequest,
    VolumeBackingRequest,
    VolumeConfig,
    VolumeRemoveRequest,
    VolumeSetRequest,
)
from shadowfs.service import protocol
from shadowfs.statedir import Volume


def text(request: Frame, name: str) -> str:
    value = optional_text(request, name)
    if value is None:
        raise frames.RequestError(f"request field {name!r} is missing or not a str")
    return value


def optional_text(request: Frame, name: str) -> str | None:
    value = request.get(name)
    if value is not None and not isinstance(value, str):
        raise frames.RequestError(f"request field {name!r} is missing or not a str")
    return value


def volume_add_request(request: Frame) -> VolumeAddRequest:
    """Names and paths as strings (the volume table checks them further), the size parsed."""
    checked: VolumeAddRequest = {"op": "volume_add", "name": text(request, "name"),
                                 "backing": text(request, "backing"),
                                 "mount": optional_text(request, "mount")}
    size = request.get("max_diff_area_bytes")
    checked["max_diff_area_bytes"] = None if size is None else statedir.parse_size(size)
    force = request.get("force", False)
    if not isinstance(force, bool):
        raise frames.RequestError("request field 'force' is not a bool")
    checked["force"] = force
    blocks = request.get("blocks")
    if blocks not in (None, "volume", "state"):
        raise frames.RequestError("request field 'blocks' is not 'volume', 'state' or null")
    checked["blocks"] = blocks
    return checked


def volume_remove_request(request: Frame) -> VolumeRemoveRequest:
    return {"op": "volume_remove", "name": text(request, "name"), "force": bool(request.get("force", False))}


def volume_backing_request(request: Frame) -> VolumeBackingRequest:
    return {"op": "volume_backing", "name": text(request, "name")}


def flag(request: Frame, name: str) -> bool:
    value = request.get(name, False)
    if not isinstance(value, bool):
        raise frames.RequestError(f"request field {name!r} is not a bool")
    return value


def snapshot_delete_request(request: Frame) -> SnapshotDeleteRequest:
    return {"op": "snapshot_delete", "snapshot": text(request, "snapshot"), "force": flag(request, "force")}


def snapshot_hold_request(request: Frame) -> SnapshotHoldRequest:
    if request.get("op") == "snapshot_release":
        return {"op": "snapshot_release", "snapshot": text(request, "snapshot")}
    return {"op": "snapshot_hold", "snapshot": text(request, "snapshot")}


def snapshot_expose_request(request: Frame) -> SnapshotExposeRequest:
    return {"op": "snapshot_expose", "snapshot": text(request, "snapshot"), "path": text(request, "path")}


def snapshot_unexpose_request(request: Frame) -> SnapshotUnexposeRequest:
    return {"op": "snapshot_unexpose", "path": text(request, "path")}


KEEP_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


def snapshot_prune_request(request: Frame) -> SnapshotPruneRequest:
    keep = request.get("keep")
    if not isinstance(keep, dict) or set(keep) - set(KEEP_RULES):
        raise frames.RequestError(f"request field 'keep' must map some of {', '.join(KEEP_RULES)} to counts")
    counts = {rule: keep.get(rule, 0) for rule in KEEP_RULES}
    for rule, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise frames.RequestError(f"keep {rule} must be a count >= 0, not {count!r}")
    checked: KeepCounts = {"last": counts["last"], "hourly": counts["hourly"],
                           "daily": counts["daily"], "weekly": counts["weekly"],
                           "monthly": counts["monthly"], "yearly": counts["yearly"]}
    return {"op": "snapshot_prune", "keep": checked, "volume": optional_text(request, "volume"),
            "label": protocol.label(request), "dry_run": flag(request, "dry_run")}


def volume_set_request(request: Frame) -> VolumeSetRequest:
    size = request.get("max_diff_area_bytes")
    if size is None:
        raise frames.RequestError("request field 'max_diff_area_bytes' is missing: nothing to set")
    return {"op": "volume_set", "name": text(request, "name"),
            "max_diff_area_bytes": statedir.parse_size(size)}


def snapshot_damage_request(request: Frame) -> SnapshotDamageRequest:
    return {"op": "snapshot_damage", "snapshot": text(request, "snapshot")}


def volume_config(volume: Volume) -> VolumeConfig:
    """`volume` as `volumes.json` holds it (`Volume.to_json`, field by field in its order)."""
    return {"name": volume.name, "index": volume.index, "backing": volume.backing, "mount": volume.mount,
            "max_diff_area_bytes": volume.max_diff_area_bytes, "created": volume.created,
            "blocks": volume.blocks}




def shutdown_request(request: Frame) -> ShutdownRequest:
    unprotect = request.get("unprotect", False)
    if not isinstance(unprotect, bool):
        raise frames.RequestError("request field 'unprotect' is not a bool")
    return {"op": "shutdown", "unprotect": unprotect}
