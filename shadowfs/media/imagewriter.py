"""Writing one image: everything goes into ``<media>/.incomplete-<id>/``, then one rename publishes it.

One job: crash-safe image creation. Blobs are appended to pack files (one
sha256 per blob; a blob equal to one already in this image is rolled back and
shared), records are appended to the manifest as they come, documents are
written whole. `commit` then fsyncs every file, writes image.json, computes
the size and sha256 of every file, writes and fsyncs ``COMPLETE``, fsyncs the
directories, renames ``.incomplete-<id>`` to ``<id>`` and fsyncs the media
directory.

Invariants:
- An image directory without the ``.incomplete-`` prefix exists only after
  all of its bytes and its COMPLETE marker are durable; a crash or a full disk
  at any earlier point leaves only an ``.incomplete-`` directory, which readers
  ignore (`abort`, and every exception inside ``with``, removes it).
- Nothing here reads the source trees: callers hand over bytes and records.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterable
from typing import Any

from shadowfs.linux.confined import remove_tree_at
from shadowfs.media import layout
from shadowfs.media.layout import ImageInfo, MediaError
from shadowfs.media.records import DataRef, Record, encode_line

PACK_LIMIT = 1 << 30
WRITE_CHUNK = 1 << 20


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _media_error(exc: OSError, what: str) -> MediaError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return MediaError(f"backup media is full while writing {what}: image not completed")
    return MediaError(f"cannot write {what}: {exc.strerror or exc}")


class ImageWriter:
    """One image being written; use as a context manager, call `commit` at the end of the ``with``."""

    def __init__(self, media: str, info: ImageInfo) -> None:
        layout.check_image_id(info.id)
        self.media = os.path.abspath(media)
        self.info = info
        self.final = os.path.join(self.media, info.id)
        self.path = os.path.join(self.media, layout.INCOMPLETE_PREFIX + info.id)
        self._pack_fd = -1
        self._pack_no = -1
        self._pack_pos = 0
        self._blobs: dict[str, DataRef] = {}
        self._manifest_fd = -1
        self.records = 0
        self.committed = False
        try:
            os.makedirs(self.media, exist_ok=True)
            if os.path.lexists(self.final):
                raise MediaError(f"image {info.id} already exists on {self.media}")
            os.mkdir(self.path, 0o700)
            os.mkdir(os.path.join(self.path, layout.DATA), 0o700)
            os.mkdir(os.path.join(self.path, layout.DOCUMENTS), 0o700)
            self._manifest_fd = os.open(os.path.join(self.path, layout.MANIFEST),
                                        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self.abort()
            raise _media_error(exc, f"image {info.id}") from None

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if not self.committed:
            self.abort()

    # ---- blobs ------------------------------------------------------------------------------

    def _next_pack(self) -> None:
        self._close_pack()
        self._pack_no += 1
        self._pack_fd = os.open(os.path.join(self.path, layout.pack_name(self._pack_no)),
                                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._pack_pos = 0

    def _close_pack(self) -> None:
        if self._pack_fd >= 0:
            os.fsync(self._pack_fd)
            os.close(self._pack_fd)
            self._pack_fd = -1

    def add_blob(self, chunks: Iterable[bytes], how: str = "full",
                 extents: list[tuple[int, int]] | None = None) -> DataRef:
        """Append the bytes of `chunks` as one blob; a `DataRef` for it (shared if already stored)."""
        try:
            if self._pack_fd < 0 or self._pack_pos >= PACK_LIMIT:
                self._next_pack()
            start = self._pack_pos
            digest = hashlib.sha256()
            for chunk in chunks:
                if chunk:
                    _write_all(self._pack_fd, chunk)
                    digest.update(chunk)
                    self._pack_pos += len(chunk)
            length = self._pack_pos - start
            sha = digest.hexdigest()
            known = self._blobs.get(sha)
            if known is not None and known.length == length:
                os.ftruncate(self._pack_fd, start)
                os.lseek(self._pack_fd, start, os.SEEK_SET)
                self._pack_pos = start
                return DataRef(how, list(extents or []), known.pack, known.offset, length, sha)
            ref = DataRef(how, list(extents or []), self._pack_no, start, length, sha)
            self._blobs[sha] = ref
            return ref
        except OSError as exc:
            raise _media_error(exc, f"image {self.info.id} data") from None

    # ---- records and documents --------------------------------------------------------------

    def add_record(self, record: Record) -> None:
        try:
            _write_all(self._manifest_fd, encode_line(record))
        except OSError as exc:
            raise _media_error(exc, f"image {self.info.id} manifest") from None
        self.records += 1

    def add_document(self, kind: str, xml: str | bytes) -> str:
        """Store the BCD (`kind` "bcd") or the next WMD (`kind` "wmd"); its name in the image."""
        if kind == "bcd":
            name = f"{layout.DOCUMENTS}/bcd.xml"
            self.info.bcd = name
        elif kind == "wmd":
            name = f"{layout.DOCUMENTS}/wmd-{len(self.info.wmds) + 1}.xml"
            self.info.wmds.append(name)
        else:
            raise ValueError(f"unknown document kind {kind!r}")
        self._write_file(name, xml.encode() if isinstance(xml, str) else bytes(xml))
        return name

    def add_state_index(self, data: bytes) -> None:
        """Store the chain's state index (`media.stateindex`)."""
        self._write_file(layout.STATE_INDEX, data)

    def _write_file(self, name: str, data: bytes) -> None:
        try:
            fd = os.open(os.path.join(self.path, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o600)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _media_error(exc, f"image {self.info.id} {name}") from None

    # ---- finishing --------------------------------------------------------------------------

    def _file_table(self) -> dict[str, dict[str, Any]]:
        table: dict[str, dict[str, Any]] = {}
        for top, _, names in os.walk(self.path):
            for name in names:
                full = os.path.join(top, name)
                rel = os.path.relpath(full, self.path)
                digest = hashlib.sha256()
                size = 0
                with open(full, "rb") as f:
                    while chunk := f.read(WRITE_CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                table[rel] = {"size": size, "sha256": digest.hexdigest()}
        return table

    def commit(self, stats: dict[str, Any] | None = None) -> str:
        """Make the image durable and visible; returns its id."""
        try:
            self._close_pack()
            os.fsync(self._manifest_fd)
            os.close(self._manifest_fd)
            self._manifest_fd = -1
            self.info.stats = {**(stats or {}), "records": self.records}
            self._write_file(layout.IMAGE_JSON, layout.canonical(self.info.to_json()))
            for sub in (layout.DATA, layout.DOCUMENTS):
                fsync_dir(os.path.join(self.path, sub))
            marker = layout.complete_document(self.info.id, self._file_table())
            self._write_file(layout.COMPLETE, marker)
            fsync_dir(self.path)
            os.rename(self.path, self.final)
            fsync_dir(self.media)
        except OSError as exc:
            self.abort()
            raise _media_error(exc, f"image {self.info.id}") from None
        self.committed = True
        return self.info.id

    def abort(self) -> None:
        """Close everything and remove the incomplete directory (best effort)."""
        for attr in ("_pack_fd", "_manifest_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, attr, -1)
        try:
            parent = os.open(self.media, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            remove_tree_at(parent, os.path.basename(self.path))
        except OSError:
            pass
        finally:
            os.close(parent)
