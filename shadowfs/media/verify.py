"""Verifying backup media: every byte of every image against its checksums, and every chain.

One job: find damage. For each image: the COMPLETE marker's own checksum; the
size and sha256 of every file it lists (image.json, manifest, documents,
packs); no file on disk that it does not list; every manifest record well
formed; every blob's sha256 (so a flipped bit in a pack also names the backed
up file it hits); the chain: every earlier image present and complete, chains
that agree with each other, and the whole chain applicable (`state`).

`verify` returns problems instead of stopping at the first, so one run reports
all the damage; `check_chain` raises on any problem (restore's gate).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shadowfs.media import layout, stateindex
from shadowfs.media.layout import MediaError
from shadowfs.media.reader import Image, image_names
from shadowfs.media.records import Record
from shadowfs.media.state import ChainState

READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one image."""

    image: str
    message: str

    def __str__(self) -> str:
        return self.message if self.message.startswith(f"image {self.image}") else \
            f"image {self.image}: {self.message}"


class Tally:
    """How far a verification got (files checked, bytes read), told to an optional progress callback
    as ``{"files", "bytes", "path"}``."""

    def __init__(self, progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.progress = progress
        self.files = 0
        self.bytes = 0

    def read(self, count: int, path: str) -> None:
        self.bytes += count
        if self.progress is not None:
            self.progress({"files": self.files, "bytes": self.bytes, "path": path})

    def checked(self, path: str) -> None:
        self.files += 1
        self.read(0, path)


def _hash_file(path: str, tally: Tally) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while chunk := os.read(fd, READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            tally.read(len(chunk), path)
    finally:
        os.close(fd)
    tally.checked(path)
    return size, digest.hexdigest()


def _check_files(image: Image, tally: Tally) -> list[str]:
    """Problems with the files of an image: missing, extra, wrong size or checksum."""
    problems = []
    on_disk: set[str] = set()
    for top, dirs, names in os.walk(image.path):
        for name in dirs + names:
            full = os.path.join(top, name)
            rel = os.path.relpath(full, image.path)
            mode = os.lstat(full).st_mode
            if stat.S_ISDIR(mode) and rel in (layout.DATA, layout.DOCUMENTS):
                continue
            if not stat.S_ISREG(mode):
                problems.append(f"{rel}: unexpected {'directory' if stat.S_ISDIR(mode) else 'non-file'}")
                continue
            if rel != layout.COMPLETE:
                on_disk.add(rel)
    for rel in sorted(on_disk - set(image.files)):
        problems.append(f"{rel}: file not listed in {layout.COMPLETE}")
    for rel, item in sorted(image.files.items()):
        if rel not in on_disk:
            problems.append(f"{rel}: missing")
            continue
        size, sha = _hash_file(image.file_path(rel), tally)
        if size != item["size"]:
            problems.append(f"{rel}: size {size}, expected {item['size']} (truncated or damaged)")
        elif sha != item["sha256"]:
            problems.append(f"{rel}: checksum mismatch (damaged)")
    return problems


def _check_blobs(image: Image, records: list[Record], images: dict[str, Image], tally: Tally) -> list[str]:
    problems = []
    checked: set[tuple[str, int, int, int, str]] = set()
    for record in records:
        data = record.data
        if data is None or not data.has_blob:
            continue
        owner = images.get(data.image) if data.how == "ref" and data.image else image
        if owner is None:
            continue  # reported by the chain check
        key = (owner.id, data.pack, data.offset, data.length, data.sha256)
        if key in checked:
            continue
        checked.add(key)
        label = f"{record.volume}:{record.path}"
        try:
            for chunk in owner.blob(data, label=label):
                tally.read(len(chunk), label)
        except MediaError as exc:
            problems.append(str(exc))
        tally.checked(label)
    return problems


def verify_image(media: str, image_id: str, tally: Tally | None = None) -> list[Problem]:
    """Every problem with one image and its chain (an empty list: the image is sound)."""
    tally = tally if tally is not None else Tally()
    try:
        image = Image(media, image_id)
    except MediaError as exc:
        return [Problem(image_id, str(exc))]
    problems = [Problem(image_id, f"image {image_id}: {p}") for p in _check_files(image, tally)]
    images: dict[str, Image] = {image_id: image}
    for earlier in image.info.chain:
        try:
            images[earlier] = Image(media, earlier)
        except MediaError as exc:
            problems.append(Problem(image_id, f"image {image_id}: chain image {earlier}: {exc}"))
    try:
        own = list(image.records())
    except MediaError as exc:
        return problems + [Problem(image_id, str(exc))]
    problems += [Problem(image_id, p) for p in _check_blobs(image, own, images, tally)]
    if len(images) <= len(image.info.chain):
        return problems  # a chain image is missing: reported above
    problems += [Problem(image_id, p) for p in _check_chain_order(image, images)]
    state = ChainState(lambda owner, pack: images[owner].pack_size(pack))
    try:
        for earlier in image.info.chain:
            state.apply(earlier, images[earlier].info.type, images[earlier].records())
        state.apply(image_id, image.info.type, own)
    except MediaError as exc:
        return problems + [Problem(image_id, str(exc))]
    return problems + [Problem(image_id, p) for p in _check_state_index(image, state)]


def _check_state_index(image: Image, state: ChainState) -> list[str]:
    """The image's state index, if it has one, must say what folding its chain says."""
    if layout.STATE_INDEX not in image.files:
        return []
    try:
        index = stateindex.resolve(image)
    except MediaError as exc:
        return [str(exc)]
    if index.comparable() != stateindex.from_chain(state).comparable():
        return [f"image {image.id}: {layout.STATE_INDEX} disagrees with the manifests of its chain"]
    return []


def _check_chain_order(image: Image, images: dict[str, Image]) -> list[str]:
    info = image.info
    where = f"image {info.id}"
    if info.type in ("full", "copy"):
        return [f"{where}: a {info.type} image has a chain"] if info.chain else []
    if not info.chain:
        return [f"{where}: a {info.type} image without a base image"]
    base = images[info.chain[-1]]
    problems = []
    if base.info.chain + [base.id] != info.chain:
        problems.append(f"{where}: chain {info.chain} does not extend its base's chain {base.info.chain}")
    allowed = {"incremental": ("full", "incremental", "differential"), "differential": ("full",),
               "log": ("full", "incremental", "differential", "log")}[info.type]
    if base.info.type not in allowed:
        problems.append(f"{where}: a {info.type} image cannot build on a {base.info.type} image")
    if base.info.created > info.created:
        problems.append(f"{where}: base image {base.id} is newer than the image")
    return problems


def verify(media: str, image_id: str | None = None,
           progress: Callable[[dict[str, Any]], None] | None = None) -> list[Problem]:
    """Problems with one image (and its chain), or with every image on the media; `progress` is told
    ``{"files", "bytes", "path"}`` as files and blobs are read."""
    tally = Tally(progress)
    if image_id is not None:
        layout.check_image_id(image_id)
        return verify_image(media, image_id, tally)
    problems: list[Problem] = []
    for name in image_names(media):
        problems += verify_image(media, name, tally)
    return problems


def check_chain(media: str, image_id: str) -> None:
    """Raise MediaError (all problems in its message) unless the image and its chain are sound."""
    problems = verify_image(media, image_id)
    for earlier in Image(media, image_id).info.chain if not problems else []:
        problems += verify_image(media, earlier)
    if problems:
        raise MediaError("; ".join(dict.fromkeys(str(p) for p in problems)))
