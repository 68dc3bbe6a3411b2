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
    ShutdownRequest,
    SnapshotDamageRequest,
    SnapshotDeleteRequest,
    VolumeAddRequest,
    VolumeBackingRequest,
    VolumeConfig,
    VolumeRemoveRequest,
)
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


def snapshot_delete_request(request: Frame) -> SnapshotDeleteRequest:
    return {"op": "snapshot_delete", "snapshot": text(request, "snapshot")}


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
