"""The layout of backup media and of one image on it; the one place that names its files.

::

    <media>/
      <image id>/                      a complete image (only ever made by a rename)
        image.json                     what the image is (ImageInfo)
        manifest.jsonl                 one record per line (records.py)
        state.json                     what the chain up to this image restores (stateindex.py;
                                       optional: a shortcut for the next backup, never for restore)
        documents/bcd.xml              the Backup Components Document, if any
        documents/wmd-<n>.xml          every Writer Metadata Document, n = 1, 2, ...
        data/<n>.pack                  blobs, one after another (n = 000000, 000001, ...)
        COMPLETE                       written last: size and sha256 of every other file
      .incomplete-<image id>/          an image being written (or left by a crash): ignored

``image.json``::

    {"format": "shadowfs-image", "version": 1, "features": [],
     "id", "created" (UTC ISO 8601), "type": full|incremental|differential|log|copy,
     "set_id", "volumes": [{"name", "source", "snapshot_id", "seq"}],
     "base": image id or null, "chain": [image ids to restore before this one, in order],
     "documents": {"bcd": "documents/bcd.xml" or null, "wmds": ["documents/wmd-1.xml", ...]},
     "components": [...as given by the requester...], "stats": {"files", "bytes", "records"}}

``COMPLETE``::

    {"format": "shadowfs-complete", "image", "files": {relative path: {"size", "sha256"}}, "self": sha256}

where ``self`` is the sha256 of the canonical JSON of the object without
``self``. A reader refuses a version it does not know and any feature it does
not support, so old code never misreads new media (the borg habit).

Version history: 1 — first format.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from shadowfs.errors import MediaError as MediaError
from shadowfs.errors import MediaNotFound
from shadowfs.media.records import IMAGE_ID_RE, RecordError, volume_name

IMAGE_FORMAT = "shadowfs-image"
COMPLETE_FORMAT = "shadowfs-complete"
VERSION = 1
SUPPORTED_FEATURES: frozenset[str] = frozenset()
IMAGE_JSON = "image.json"
MANIFEST = "manifest.jsonl"
STATE_INDEX = "state.json"
COMPLETE = "COMPLETE"
DOCUMENTS = "documents"
DATA = "data"
INCOMPLETE_PREFIX = ".incomplete-"
BACKUP_TYPES = ("full", "incremental", "differential", "log", "copy")
PACK_NAME_RE = re.compile(r"data/([0-9]{6})\.pack\Z")
DOC_NAME_RE = re.compile(r"documents/(bcd|wmd-[0-9]{1,6})\.xml\Z")
MAX_META_FILE = 64 << 20


def pack_name(number: int) -> str:
    return f"{DATA}/{number:06d}.pack"


def new_image_id(now: float | None = None) -> str:
    """A new image id: the UTC time (sortable) and 8 random hex digits."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(4)}"


def check_image_id(image_id: str) -> str:
    if not isinstance(image_id, str) or not IMAGE_ID_RE.match(image_id):
        raise MediaNotFound(f"{image_id!r} is not an image id")
    return image_id


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("ascii")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class ImageInfo:
    """The contents of image.json."""

    id: str
    created: str
    type: str
    set_id: str = ""
    volumes: list[dict[str, Any]] = field(default_factory=list)
    base: str | None = None
    chain: list[str] = field(default_factory=list)
    bcd: str | None = None
    wmds: list[str] = field(default_factory=list)
    components: list[Any] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    features: list[str] = field(default_factory=list)
    version: int = VERSION

    @property
    def volume_names(self) -> list[str]:
        return [v["name"] for v in self.volumes]

    def to_json(self) -> dict[str, Any]:
        return {"format": IMAGE_FORMAT, "version": self.version, "features": self.features, "id": self.id,
                "created": self.created, "type": self.type, "set_id": self.set_id, "volumes": self.volumes,
                "base": self.base, "chain": self.chain,
                "documents": {"bcd": self.bcd, "wmds": self.wmds}, "components": self.components,
                "stats": self.stats}

    @classmethod
    def from_json(cls, obj: Any) -> ImageInfo:
        """Parse and check image.json (MediaError says what is wrong)."""
        try:
            return cls._parse(obj)
        except (KeyError, TypeError, AttributeError, RecordError) as exc:
            raise MediaError(f"{IMAGE_JSON}: malformed ({exc})") from None

    @classmethod
    def _parse(cls, obj: Any) -> ImageInfo:
        if not isinstance(obj, dict) or obj.get("format") != IMAGE_FORMAT:
            raise MediaError(f"{IMAGE_JSON}: not a shadowfs image description")
        version = obj.get("version")
        if version != VERSION:
            raise MediaError(f"{IMAGE_JSON}: image format version {version!r}; this shadowfs reads {VERSION}")
        features = obj["features"]
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise MediaError(f"{IMAGE_JSON}: features is not a list of names")
        unknown = sorted(set(features) - SUPPORTED_FEATURES)
        if unknown:
            raise MediaError(f"{IMAGE_JSON}: needs features this shadowfs lacks: {', '.join(unknown)}")
        if obj["type"] not in BACKUP_TYPES:
            raise MediaError(f"{IMAGE_JSON}: unknown backup type {obj['type']!r}")
        volumes = obj["volumes"]
        if not isinstance(volumes, list) or not all(isinstance(v, dict) for v in volumes):
            raise MediaError(f"{IMAGE_JSON}: volumes is not a list of objects")
        names = [volume_name(v["name"]) for v in volumes]
        if len(set(names)) != len(names):
            raise MediaError(f"{IMAGE_JSON}: a volume is listed twice")
        chain = obj["chain"]
        if not isinstance(chain, list):
            raise MediaError(f"{IMAGE_JSON}: chain is not a list")
        for item in chain:
            check_image_id(item)
        base = obj["base"]
        if base is not None:
            check_image_id(base)
        if (base is None) != (not chain) or (chain and chain[-1] != base):
            raise MediaError(f"{IMAGE_JSON}: base {base!r} is not the last image of chain {chain!r}")
        documents = obj["documents"]
        bcd, wmds = documents["bcd"], documents["wmds"]
        for name in ([bcd] if bcd is not None else []) + list(wmds):
            if not isinstance(name, str) or not DOC_NAME_RE.match(name):
                raise MediaError(f"{IMAGE_JSON}: bad document name {name!r}")
        stats = obj["stats"]
        if not isinstance(stats, dict):
            raise MediaError(f"{IMAGE_JSON}: stats is not an object")
        created, set_id = obj["created"], obj["set_id"]
        if not isinstance(created, str) or not isinstance(set_id, str):
            raise MediaError(f"{IMAGE_JSON}: created and set_id must be strings")
        return cls(id=check_image_id(obj["id"]), created=created, type=obj["type"], set_id=set_id,
                   volumes=volumes, base=base, chain=list(chain), bcd=bcd, wmds=list(wmds),
                   components=list(obj["components"]), stats=stats, features=features, version=version)


def complete_document(image_id: str, files: dict[str, dict[str, Any]]) -> bytes:
    body = {"format": COMPLETE_FORMAT, "image": image_id, "files": files}
    return canonical({**body, "self": sha256_hex(canonical(body))})


def parse_complete(data: bytes, image_id: str) -> dict[str, dict[str, Any]]:
    """The file table of a COMPLETE marker, after checking its own checksum."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise MediaError(f"image {image_id}: {COMPLETE} is not valid JSON (damaged)") from None
    if not isinstance(obj, dict) or obj.get("format") != COMPLETE_FORMAT:
        raise MediaError(f"image {image_id}: {COMPLETE} is not a completion marker (damaged)")
    claimed = obj.pop("self", None)
    if claimed != sha256_hex(canonical(obj)):
        raise MediaError(f"image {image_id}: {COMPLETE} checksum mismatch (damaged)")
    if obj.get("image") != image_id:
        raise MediaError(f"image {image_id}: {COMPLETE} belongs to image {obj.get('image')!r}")
    files = obj.get("files")
    if not isinstance(files, dict):
        raise MediaError(f"image {image_id}: {COMPLETE} has no file table")
    for name, item in files.items():
        if not (name in (IMAGE_JSON, MANIFEST, STATE_INDEX) or PACK_NAME_RE.match(name)
                or DOC_NAME_RE.match(name)):
            raise MediaError(f"image {image_id}: {COMPLETE} lists an unexpected file {name!r}")
        if not isinstance(item, dict) or not isinstance(item.get("size"), int) \
                or not isinstance(item.get("sha256"), str):
            raise MediaError(f"image {image_id}: {COMPLETE} entry for {name} is malformed")
    for required in (IMAGE_JSON, MANIFEST):
        if required not in files:
            raise MediaError(f"image {image_id}: {COMPLETE} does not list {required}")
    return files
