"""Backup media: a directory of images, each one backup run, self-describing and verifiable.

Data flow::

    shadowfs.backup --records, blobs, documents--> ImageWriter --rename--> <media>/<id>/
    shadowfs.restore <--ChainState (checked chain)-- reader.Image <-- verify (every checksum)

Modules:

| module | job |
|---|---|
| `layout` | file names, image.json (`ImageInfo`), the COMPLETE marker, ids, `MediaError` |
| `records` | one manifest line: `Record`, `DataRef`, strict parsing |
| `imagewriter` | crash-safe writing of one image (`.incomplete-<id>/`, fsync, COMPLETE, rename) |
| `reader` | complete images, their records and blobs, chains, base images |
| `state` | the tree a chain describes; every rule a restore relies on |
| `stateindex` | that tree saved beside each image (`state.json`), so a backup need not fold the chain |
| `verify` | every checksum, marker and chain; problems named by image and file |
"""

from shadowfs.media.imagewriter import ImageWriter
from shadowfs.media.layout import BACKUP_TYPES, ImageInfo, MediaError, new_image_id
from shadowfs.media.reader import Image, chain_images, find_base, list_images, open_image
from shadowfs.media.records import DataRef, Record, RecordError
from shadowfs.media.state import ChainState, PathState, VolumeState
from shadowfs.media.verify import Problem, check_chain, verify

__all__ = [
    "BACKUP_TYPES", "ChainState", "DataRef", "Image", "ImageInfo", "ImageWriter", "MediaError", "PathState",
    "Problem", "Record", "RecordError", "VolumeState", "chain_images", "check_chain", "find_base",
    "list_images", "new_image_id", "open_image", "verify",
]
