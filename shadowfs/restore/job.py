"""A restore job with writers: the requester's PreRestore / PostRestore around the restore engine.

```
 run_restore: per image of the chain: load its BCD -> select components of registered writers
   -> set_additional_restores (true unless this is the component's last image) -> add_new_target
   -> pre_restore -> restore.restore writes the image (new targets, directed targets) -> post_restore
```

One job: restore an image and its chain (`restore.engine.restore`) with the
writers named in each image's saved BCD, turning their restore documents into
the engine's steps (`restore.engine.ImageSteps`: relocations for new targets,
directed targets). An image without writer components is restored by the
engine alone.

Invariants:
- Nothing of an image is written before its PreRestore succeeded and all of
  its steps were checked: new targets must lie on one volume of the image and
  writers must support them; directed targets with ``file=`` ranges are
  refused; source ranges must lie inside the backed-up source file and pair
  with the destination ranges.
- A writer instance of the image that is not registered now is left out
  (its components are restored without it, with a warning).
- PostRestore failures do not undo the restore: they are returned beside the
  engine's result.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence

from shadowfs import statedir
from shadowfs.backup.plan import base_document, locate
from shadowfs.documents import (
    BackupSchema,
    ComponentState,
    DirectedTarget,
    DocumentError,
    RangeError,
    RestoreTarget,
    RestoreType,
    SnapshotContext,
    WriterMetadata,
    check_directed_ranges,
    parse_range_string,
    ranges_file_path,
)
from shadowfs.errors import BackupJobError, BackupRefused
from shadowfs.media import Image
from shadowfs.media.reader import chain_images
from shadowfs.media.state import ChainState
from shadowfs.restore.engine import Directed, ImageSteps, Progress, Relocation, RestoreResult, restore
from shadowfs.vss.requester import SyncBackupComponents


class _WriterRestore:
    """The restore hooks: PreRestore / PostRestore with the writers of each image's saved BCD."""

    def __init__(self, bc: SyncBackupComponents, chain: list[Image], registered: set[str],
                 new_targets: Sequence[tuple[str, str]]) -> None:
        self.bc = bc
        self.chain = chain
        self.registered = registered
        self.new_targets = list(new_targets)
        self.docs = [base_document(image) for image in chain]
        self.failures: list[str] = []
        self.warnings: list[str] = []

    def _roots(self, image: Image) -> dict[str, str]:
        return {v["name"]: v["mount"] for v in image.info.volumes if isinstance(v.get("mount"), str)}

    def _later(self, index: int, instance: uuid.UUID, logical_path: str, name: str) -> bool:
        return any(doc is not None and doc.get_component(instance, logical_path, name) is not None
                   for doc in self.docs[index + 1:])

    def before_image(self, image: Image, index: int, last: bool, state: ChainState) -> ImageSteps:
        doc = self.docs[index]
        if doc is None or not doc.writers:
            return ImageSteps()
        gone = [str(w.instance_id) for w in doc.writers if str(w.instance_id) not in self.registered]
        for instance in gone:
            self.warnings.append(f"image {image.id}: writer instance {instance} is not registered: "
                                 "its components are restored without it")
        doc.writers = [w for w in doc.writers if str(w.instance_id) in self.registered]
        if not doc.writers:
            return ImageSteps()
        self.bc.load_from_xml(doc.to_xml())
        self.bc.set_restore_state(RestoreType.BY_COPY)
        schemas = self._schemas(image)
        roots = self._roots(image)
        for writer, component in list(self.bc.document.iter_components()):
            args = (str(writer.instance_id), str(writer.writer_id), component.type, component.logical_path,
                    component.name)
            self.bc.set_selected_for_restore(*args, True)
            self.bc.set_additional_restores(*args, self._later(index, writer.instance_id,
                                                               component.logical_path, component.name))
            for source, dest in self.new_targets:
                if not self._component_under(image, writer.instance_id, component, source):
                    continue
                if not schemas.get(str(writer.instance_id), BackupSchema.UNDEFINED) \
                        & BackupSchema.WRITER_SUPPORTS_NEW_TARGET:
                    raise BackupJobError(f"writer instance {writer.instance_id} does not support new targets "
                                         f"(component {component.full_path!r})")
                self.bc.add_new_target(*args, source, "*", True, dest)
        self.bc.pre_restore()
        for result in self.bc.last_results:
            if result.get("ok") is False:
                raise BackupJobError(f"writer {result.get('writer_name')!r} failed PreRestore: "
                                     f"{result.get('message') or result.get('failure')}: nothing of image "
                                     f"{image.id} was written")
        return self._steps(image, roots, state)

    def _schemas(self, image: Image) -> dict[str, BackupSchema]:
        out: dict[str, BackupSchema] = {}
        for name in image.info.wmds:
            try:
                wmd = WriterMetadata.from_xml(image.document(name))
            except DocumentError:
                continue
            out[str(wmd.identity.instance_id)] = wmd.backup_schema
        return out

    def _component_under(self, image: Image, instance: uuid.UUID, component: ComponentState,
                         root: str) -> bool:
        for name in image.info.wmds:
            try:
                wmd = WriterMetadata.from_xml(image.document(name))
            except DocumentError:
                continue
            if wmd.identity.instance_id != instance:
                continue
            found = wmd.get_component(component.logical_path, component.name)
            if found is not None:
                specs = list(found.all_file_specs)
                for sub in wmd.subcomponents(found):
                    specs.extend(sub.all_file_specs)
                return any(statedir.is_within(os.path.normpath(s.path), os.path.normpath(root))
                           for s in specs)
        return False

    def _steps(self, image: Image, roots: Mapping[str, str], state: ChainState) -> ImageSteps:
        steps = ImageSteps()
        for writer, component in self.bc.document.iter_components():
            for target in component.new_targets:
                src, dst = locate(target.path, roots), locate(target.alternate_path, roots)
                if src is None or dst is None or src[0] != dst[0]:
                    raise BackupJobError(f"new target {target.path} -> {target.alternate_path}: "
                                         "both must lie on one volume of the image")
                steps.relocations.append(Relocation(src[0], src[1], target.filespec, target.recursive, dst[1],
                                                    component.full_path, str(writer.instance_id)))
            if component.directed_targets and component.restore_target not in (RestoreTarget.DIRECTED,
                                                                               RestoreTarget.ORIGINAL):
                self.warnings.append(f"component {component.full_path!r}: directed targets with restore "
                                     f"target {component.restore_target.value}")
            for directed in component.directed_targets:
                steps.directed.append(self._directed(directed, roots, state))
        return steps

    def _directed(self, directed: DirectedTarget, roots: Mapping[str, str], state: ChainState) -> Directed:
        source = os.path.join(directed.source_path, directed.source_filename)
        dest = os.path.join(directed.destination_path, directed.destination_filename)
        label = f"directed target {source} -> {dest}"
        if ranges_file_path(directed.source_ranges) or ranges_file_path(directed.destination_ranges):
            raise BackupJobError(f"{label}: ranges files in directed targets are not supported")
        src, dst = locate(source, roots), locate(dest, roots)
        if src is None or dst is None:
            raise BackupJobError(f"{label}: not on a volume of the image")
        entry = state.volume(src[0]).entries.get(src[1])
        if entry is None or entry.record.kind != "file":
            raise BackupJobError(f"{label}: the source is not a file of the backup")
        try:
            source_ranges = parse_range_string(directed.source_ranges, file_size=entry.record.size)
            dest_ranges = parse_range_string(directed.destination_ranges)
            check_directed_ranges(source_ranges, dest_ranges)
        except RangeError as exc:
            raise BackupJobError(f"{label}: {exc}") from None
        return Directed(src[0], src[1], tuple(source_ranges), dst[0], dst[1], tuple(dest_ranges))

    def after_image(self, image: Image, index: int, last: bool) -> None:
        doc = self.docs[index]
        if doc is None or not doc.writers:
            return
        self.bc.post_restore()
        for result in self.bc.last_results:
            if result.get("ok") is False:
                self.failures.append(f"writer {result.get('writer_name')!r} failed PostRestore after image "
                                     f"{image.id}: {result.get('message') or result.get('failure')}")


def run_restore(state_dir: str | None, media: str, image_id: str, to: str | None = None, *,
                targets: Mapping[str, str] | None = None, volumes: Sequence[str] | None = None,
                new_targets: Sequence[tuple[str, str]] = (), with_writers: bool = True,
                progress: Progress | None = None) -> tuple[RestoreResult, list[str]]:
    """Restore `image_id` and its chain with the writers of its saved BCDs; returns the engine's result
    and the writers' PostRestore failures."""
    chain = chain_images(media, image_id)
    uses_writers = with_writers and any(image.info.bcd is not None for image in chain)
    if new_targets and not uses_writers:
        raise BackupRefused("new targets need the writers of the image (it has no writer components)")
    if not uses_writers:
        return restore(media, image_id, to, targets=targets, volumes=volumes, progress=progress), []
    bc = SyncBackupComponents(state_dir)
    try:
        bc.set_context(SnapshotContext.BACKUP)
        registered = set(bc.gather_writer_metadata())
        hooks = _WriterRestore(bc, chain, registered, new_targets)
        result = restore(media, image_id, to, targets=targets, volumes=volumes, progress=progress,
                         hooks=hooks)
        result.warnings.extend(hooks.warnings)
        return result, hooks.failures
    except DocumentError as exc:
        raise BackupJobError(str(exc)) from None
    finally:
        bc.close()


__all__ = ["run_restore"]
