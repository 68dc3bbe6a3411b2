"""Reading backup media: which images are complete, an image's description, records and blobs.

One job: open what `imagewriter` made, trusting nothing. An image is *complete*
when its directory has no ``.incomplete-`` prefix, is a real directory, and
has a COMPLETE marker whose own checksum holds and that lists image.json with
the right checksum; everything else about it is checked by `verify`.

Invariants:
- `list_images` shows complete images only (sorted by creation time, then
  id); ``.incomplete-*`` directories and damaged images are never listed.
- `Image.blob` checks a blob's sha256 after reading it and raises
  `MediaError` naming the image, pack and file on a mismatch.
- Every read is bounded: metadata files by `layout.MAX_META_FILE`, blobs by the
  sizes the verified COMPLETE table gives.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from typing import Any

from shadowfs.errors import MediaNotFound
from shadowfs.media import layout
from shadowfs.media.layout import ImageInfo, MediaError
from shadowfs.media.records import DataRef, Record, RecordError, decode_line, parse_line

READ_CHUNK = 1 << 20


def _read_small(path: str, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise MediaError(f"{what} is missing") from None
    except OSError as exc:
        raise MediaError(f"cannot open {what}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MediaError(f"{what} is not a regular file")
        if st.st_size > layout.MAX_META_FILE:
            raise MediaError(f"{what} is {st.st_size} bytes, too big")
        chunks = []
        while chunk := os.read(fd, READ_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class Image:
    """One complete image on the media (its files are verified by `verify`, not here)."""

    def __init__(self, media: str, image_id: str) -> None:
        layout.check_image_id(image_id)
        self.media = os.path.abspath(media)
        self.id = image_id
        self.path = os.path.join(self.media, image_id)
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            raise MediaNotFound(f"no image {image_id} on {self.media}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise MediaError(f"image {image_id}: not a directory")
        marker = _read_small(os.path.join(self.path, layout.COMPLETE),
                             f"image {image_id}: {layout.COMPLETE} marker (image incomplete)")
        self.files = layout.parse_complete(marker, image_id)
        raw = self.read_checked(layout.IMAGE_JSON)
        try:
            obj = json.loads(raw)
        except ValueError:
            raise MediaError(f"image {image_id}: {layout.IMAGE_JSON} is not JSON") from None
        try:
            self.info = ImageInfo.from_json(obj)
        except MediaError as exc:
            raise MediaError(f"image {image_id}: {exc}") from None
        if self.info.id != image_id:
            raise MediaError(f"image {image_id}: {layout.IMAGE_JSON} describes image {self.info.id}")

    def file_path(self, name: str) -> str:
        return os.path.join(self.path, name)

    def read_checked(self, name: str) -> bytes:
        """A small file of the image, checked against the COMPLETE table."""
        item = self.files.get(name)
        if item is None:
            raise MediaError(f"image {self.id}: {name} is not listed in {layout.COMPLETE}")
        data = _read_small(self.file_path(name), f"image {self.id}: {name}")
        if len(data) != item["size"] or layout.sha256_hex(data) != item["sha256"]:
            raise MediaError(f"image {self.id}: {name} checksum mismatch (damaged)")
        return data

    def records(self) -> Iterator[Record]:
        """Every manifest record, parsed and checked line by line (RecordError -> MediaError)."""
        data = self.read_checked(layout.MANIFEST)
        if data and not data.endswith(b"\n"):
            raise MediaError(f"image {self.id}: {layout.MANIFEST} is truncated (no final newline)")
        lines = data.splitlines()
        try:  # one parse of the whole manifest; line by line only to name a bad line
            objects = json.loads(b"[" + b",".join(lines) + b"]")
        except (ValueError, UnicodeDecodeError):
            objects = None
        if not isinstance(objects, list) or len(objects) != len(lines):
            objects = None
        for number, line in enumerate(lines, 1):
            try:
                yield parse_line(objects[number - 1], number) if objects is not None \
                    else decode_line(line, number)
            except RecordError as exc:
                raise MediaError(f"image {self.id}: {layout.MANIFEST}: {exc}") from None

    def document(self, name: str) -> bytes:
        return self.read_checked(name)

    def pack_size(self, number: int) -> int | None:
        item = self.files.get(layout.pack_name(number))
        return None if item is None else int(item["size"])

    def blob(self, ref: DataRef, *, label: str = "") -> Iterator[bytes]:
        """The bytes of a blob of this image, in chunks; MediaError if it is not what the manifest says."""
        name = layout.pack_name(ref.pack)
        where = f"image {self.id}: {name}" + (f" (for {label})" if label else "")
        size = self.pack_size(ref.pack)
        if size is None or ref.offset + ref.length > size:
            raise MediaError(f"{where}: blob at {ref.offset}+{ref.length} lies outside the pack")
        try:
            fd = os.open(self.file_path(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise MediaError(f"{where}: cannot open: {exc.strerror}") from None
        try:
            digest = hashlib.sha256()
            pos, end = ref.offset, ref.offset + ref.length
            while pos < end:
                chunk = os.pread(fd, min(READ_CHUNK, end - pos), pos)
                if not chunk:
                    raise MediaError(f"{where}: pack is truncated")
                digest.update(chunk)
                pos += len(chunk)
                if pos == end and digest.hexdigest() != ref.sha256:
                    raise MediaError(f"{where}: blob checksum mismatch (damaged)")
                yield chunk
        finally:
            os.close(fd)

    def summary(self) -> dict[str, Any]:
        info = self.info
        return {"id": info.id, "created": info.created, "type": info.type, "set_id": info.set_id,
                "volumes": info.volume_names, "base": info.base, "chain": info.chain,
                "files": info.stats.get("files", 0), "bytes": info.stats.get("bytes", 0),
                "components": info.components}


def image_names(media: str) -> list[str]:
    """Names of entries on the media that look like image ids (complete or not)."""
    try:
        names = os.listdir(media)
    except FileNotFoundError:
        raise MediaNotFound(f"no backup media at {media}") from None
    except NotADirectoryError:
        raise MediaNotFound(f"{media} is not a directory") from None
    out = []
    for name in names:
        try:
            layout.check_image_id(name)
        except MediaError:
            continue
        out.append(name)
    return sorted(out)


def list_images(media: str) -> list[Image]:
    """Complete images on the media, oldest first; incomplete or damaged ones are left out."""
    images = []
    for name in image_names(media):
        try:
            images.append(Image(media, name))
        except MediaError:
            continue
    images.sort(key=lambda image: (image.info.created, image.id))
    return images


def open_image(media: str, image_id: str) -> Image:
    return Image(media, image_id)


def chain_images(media: str, image_id: str) -> list[Image]:
    """The images to restore for `image_id`, in order (its chain, then itself)."""
    image = Image(media, image_id)
    return [Image(media, earlier) for earlier in image.info.chain] + [image]


BASE_TYPES = {"incremental": ("full", "incremental", "differential"), "differential": ("full",),
              "log": ("full", "incremental", "differential", "log")}


def find_base(media: str, backup_type: str, volumes: list[str]) -> Image | None:
    """The image an incremental, differential or log backup of `volumes` builds on: the newest
    complete image of an allowed type covering the same volumes (None if there is none)."""
    allowed = BASE_TYPES.get(backup_type)
    if allowed is None:
        return None
    try:
        images = list_images(media)
    except MediaError:
        return None
    for image in reversed(images):
        if image.info.type in allowed and sorted(image.info.volume_names) == sorted(volumes):
            return image
    return None
