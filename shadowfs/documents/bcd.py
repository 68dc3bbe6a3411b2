"""The Backup Components Document (BCD): what a requester selected and what happened to each component.

The requester builds it (backup state, context, selected components per writer
instance, previous stamps, restore choices); writers add to it during the
events (backup stamps, differenced files, partial files, restore targets,
directed targets, failure messages); it is saved with the backup and loaded
again for restore.

XML form (VSS names; every value is an attribute, booleans are yes/no):

    <BACKUP_COMPONENTS version="1.2" selectComponents bootableSystemStateBackup backupType
                       partialFileSupport context restoreType>
      <SNAPSHOT_SET_DESCRIPTION snapshotSetId description creationTime>
        <SNAPSHOT_DESCRIPTION snapshotId volumeName originalVolumeName deviceObject creationTime/>
      </SNAPSHOT_SET_DESCRIPTION>
      <WRITER_COMPONENTS instanceId writerId>
        <COMPONENT logicalPath componentName componentType backupSucceeded backupFailureMsg
                   backupStamp previousBackupStamp backupOptions restoreOptions additionalRestores
                   selectedForRestore restoreTarget preRestoreFailureMsg postRestoreFailureMsg
                   fileRestoreStatus authoritativeRestore restoreName rollForwardType rollForwardPoint>
          <ALTERNATE_LOCATION_MAPPING path filespec recursive alternatePath/>
          <RESTORE_SUBCOMPONENT logicalPath componentName repair/>
          <DIFFERENCED_FILES path filespec recursive lastModifyTime/>
          <PARTIAL_FILES path filespec ranges metadata rangesFilePath/>
          <DIRECTED_TARGET sourcePath sourceFilespec sourceRanges
                           destinationPath destinationFilespec destinationRanges/>
          <NEW_TARGET path filespec recursive alternatePath/>
        </COMPONENT>
      </WRITER_COMPONENTS>
    </BACKUP_COMPONENTS>

Names VSS does not give are shadowfs choices in the VSS style (vss §15):
`backupFailureMsg`, `fileRestoreStatus`, `rangesFilePath` (SetRangesFilePath),
`SNAPSHOT_DESCRIPTION`'s attributes, `creationTime` and `lastModifyTime`
(nanoseconds since the Unix epoch; a differenced file's 0 means "since the
requester's own record of the last backup", as a zero FILETIME does in VSS).
A partial file's or directed target's file name is literal (no wildcards).

Invariants (checked by `validate()`, by every `add_*`/`set_*` method, by
`to_xml` and by `from_xml`/`from_dict`): one WRITER_COMPONENTS per writer
instance; within it, no two components share a logical path and name; range
strings are valid (direct or `file=/absolute/path`); a directed target whose
both range strings are direct has ranges that pair up (same count, same
lengths); snapshot ids and volume names in the set are unique.
`from_xml(doc.to_xml()) == doc` and `from_dict(doc.to_dict()) == doc`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any, TypeVar

from shadowfs.documents import codec, xmlsafe
from shadowfs.documents.codec import attr, child, children
from shadowfs.documents.enums import (
    BackupType,
    ComponentType,
    FileRestoreStatus,
    RestoreTarget,
    RestoreType,
    RollForwardType,
    SnapshotContext,
)
from shadowfs.documents.errors import DocumentError, RangeError
from shadowfs.documents.ranges import (
    check_directed_ranges,
    check_range_string,
    parse_range_string,
    ranges_file_path,
)
from shadowfs.documents.rules import (
    check_component_name,
    check_filespec,
    check_logical_path,
    check_optional_path,
    check_path,
    full_path,
)
from shadowfs.documents.wmd import AlternateLocationMapping
from shadowfs.documents.xmlsafe import DEFAULT_LIMITS, XmlLimits

BCD_VERSION = "1.2"
T = TypeVar("T")


def _check_volume_name(value: str) -> None:
    if not value or "/" in value or value in (".", ".."):
        raise DocumentError("volume name must be a non-empty name without '/'")


@dataclasses.dataclass(kw_only=True)
class DifferencedFile:
    """Back up matching files only if modified after `last_modify_time` (DIFFERENCED_FILES).

    `last_modify_time` is in nanoseconds since the Unix epoch; 0 means "use the
    requester's own record of the last backup time" (vss §11).
    """

    path: str = attr("path", check=check_path)
    filespec: str = attr("filespec", check=check_filespec)
    recursive: bool = attr("recursive", default=False)
    last_modify_time: int = attr("lastModifyTime", default=0)


@dataclasses.dataclass(kw_only=True)
class PartialFile:
    """Back up only byte ranges of one file (PARTIAL_FILES); `ranges` is a range string or `file=PATH`.

    `ranges_file_path` is set at restore time when the ranges file was restored
    somewhere else (SetRangesFilePath); empty otherwise.
    """

    path: str = attr("path", check=check_path)
    filename: str = attr("filespec", check=check_filespec)
    ranges: str = attr("ranges", check=check_range_string)
    metadata: str = attr("metadata", default="")
    ranges_file_path: str = attr("rangesFilePath", default="", check=check_optional_path)

    @property
    def uses_ranges_file(self) -> bool:
        """Whether `ranges` names a ranges file rather than listing ranges."""
        return ranges_file_path(self.ranges) is not None


@dataclasses.dataclass(kw_only=True)
class DirectedTarget:
    """At restore, copy source ranges of a backed-up file onto destination ranges (DIRECTED_TARGET)."""

    source_path: str = attr("sourcePath", check=check_path)
    source_filename: str = attr("sourceFilespec", check=check_filespec)
    source_ranges: str = attr("sourceRanges", check=check_range_string)
    destination_path: str = attr("destinationPath", check=check_path)
    destination_filename: str = attr("destinationFilespec", check=check_filespec)
    destination_ranges: str = attr("destinationRanges", check=check_range_string)

    def _check_rules(self, where: str, scalars: bool) -> None:
        if ranges_file_path(self.source_ranges) is None and ranges_file_path(self.destination_ranges) is None:
            try:
                check_directed_ranges(parse_range_string(self.source_ranges),
                                      parse_range_string(self.destination_ranges))
            except RangeError as exc:
                raise RangeError(f"{where}: {exc}") from None


@dataclasses.dataclass(kw_only=True)
class NewTarget:
    """At restore, files matching path/filespec go to `alternate_path` instead (NEW_TARGET, AddNewTarget)."""

    path: str = attr("path", check=check_path)
    filespec: str = attr("filespec", check=check_filespec)
    recursive: bool = attr("recursive", default=False)
    alternate_path: str = attr("alternatePath", check=check_path)


@dataclasses.dataclass(kw_only=True)
class RestoreSubcomponent:
    """A subcomponent of a selected component set to restore (RESTORE_SUBCOMPONENT)."""

    logical_path: str = attr("logicalPath", default="", check=check_logical_path)
    component_name: str = attr("componentName", check=check_component_name)
    repair: bool = attr("repair", default=False)


@dataclasses.dataclass(kw_only=True)
class ComponentState:
    """One selected component of one writer instance and everything recorded about it (COMPONENT).

    The methods are the per-component calls of VSS (IVssComponent for writers,
    the per-component IVssBackupComponents calls for requesters); each checks
    its arguments and leaves the document valid.
    """

    logical_path: str = attr("logicalPath", default="", check=check_logical_path)
    name: str = attr("componentName", check=check_component_name)
    type: ComponentType = attr("componentType")
    backup_succeeded: bool = attr("backupSucceeded", default=False)
    backup_failure_msg: str = attr("backupFailureMsg", default="")
    backup_stamp: str = attr("backupStamp", default="")
    previous_backup_stamp: str = attr("previousBackupStamp", default="")
    backup_options: str = attr("backupOptions", default="")
    restore_options: str = attr("restoreOptions", default="")
    additional_restores: bool = attr("additionalRestores", default=False)
    selected_for_restore: bool = attr("selectedForRestore", default=False)
    restore_target: RestoreTarget = attr("restoreTarget", default=RestoreTarget.ORIGINAL)
    pre_restore_failure_msg: str = attr("preRestoreFailureMsg", default="")
    post_restore_failure_msg: str = attr("postRestoreFailureMsg", default="")
    file_restore_status: FileRestoreStatus = attr("fileRestoreStatus", default=FileRestoreStatus.UNDEFINED)
    authoritative_restore: bool = attr("authoritativeRestore", default=False)
    restore_name: str = attr("restoreName", default="")
    roll_forward_type: RollForwardType = attr("rollForwardType", default=RollForwardType.UNDEFINED)
    roll_forward_point: str = attr("rollForwardPoint", default="")
    alternate_location_mappings: list[AlternateLocationMapping] = children("ALTERNATE_LOCATION_MAPPING")
    restore_subcomponents: list[RestoreSubcomponent] = children("RESTORE_SUBCOMPONENT")
    differenced_files: list[DifferencedFile] = children("DIFFERENCED_FILES")
    partial_files: list[PartialFile] = children("PARTIAL_FILES")
    directed_targets: list[DirectedTarget] = children("DIRECTED_TARGET")
    new_targets: list[NewTarget] = children("NEW_TARGET")

    @property
    def full_path(self) -> str:
        """`logical_path\\name`, as in the WMD."""
        return full_path(self.logical_path, self.name)

    def _set(self, name: str, value: Any) -> None:
        info = next(i for i in codec.field_infos(ComponentState) if i.name == name)
        codec.check_scalar(info, value, f"COMPONENT {self.full_path!r}")
        setattr(self, name, value)

    def _append(self, name: str, tag: str, item: T) -> T:
        codec.check_tree(item, f"COMPONENT {self.full_path!r}/{tag}")
        getattr(self, name).append(item)
        return item

    # writer side (IVssComponent)
    def set_backup_stamp(self, stamp: str) -> None:
        """Record the writer's stamp for this backup (SetBackupStamp)."""
        self._set("backup_stamp", stamp)

    def add_differenced_files_by_last_modify_time(self, path: str, filespec: str, recursive: bool,
                                                  last_modify_time: int) -> DifferencedFile:
        """Back up matching files only if changed after the time (0: the requester's last backup time)."""
        return self._append("differenced_files", "DIFFERENCED_FILES", DifferencedFile(
            path=path, filespec=filespec, recursive=recursive, last_modify_time=last_modify_time))

    def add_partial_file(self, path: str, filename: str, ranges: str, metadata: str = "") -> PartialFile:
        """Back up only `ranges` (a range string or `file=PATH`) of one file (AddPartialFile)."""
        return self._append("partial_files", "PARTIAL_FILES", PartialFile(
            path=path, filename=filename, ranges=ranges, metadata=metadata))

    def add_directed_target(self, source_path: str, source_filename: str, source_ranges: str,
                            destination_path: str, destination_filename: str,
                            destination_ranges: str) -> DirectedTarget:
        """Map source ranges of a backed-up file onto destination ranges at restore (AddDirectedTarget)."""
        return self._append("directed_targets", "DIRECTED_TARGET", DirectedTarget(
            source_path=source_path, source_filename=source_filename, source_ranges=source_ranges,
            destination_path=destination_path, destination_filename=destination_filename,
            destination_ranges=destination_ranges))

    def set_restore_target(self, target: RestoreTarget) -> None:
        """Say where the component is restored (SetRestoreTarget)."""
        self._set("restore_target", _enum(RestoreTarget, target, "set_restore_target"))

    def set_pre_restore_failure_msg(self, message: str) -> None:
        """Record why PreRestore failed for this component."""
        self._set("pre_restore_failure_msg", message)

    def set_post_restore_failure_msg(self, message: str) -> None:
        """Record why PostRestore failed for this component."""
        self._set("post_restore_failure_msg", message)

    # requester side (IVssBackupComponents, per component)
    def set_backup_succeeded(self, succeeded: bool, failure_msg: str = "") -> None:
        """Record whether every file of the component (and its set) was backed up, and why not."""
        self._set("backup_succeeded", succeeded)
        self._set("backup_failure_msg", failure_msg)

    def set_previous_backup_stamp(self, stamp: str) -> None:
        """Pass the stamp of the previous backup back to the writer (SetPreviousBackupStamp)."""
        self._set("previous_backup_stamp", stamp)

    def set_backup_options(self, options: str) -> None:
        """Writer-specific backup options (SetBackupOptions)."""
        self._set("backup_options", options)

    def set_restore_options(self, options: str) -> None:
        """Writer-specific restore options (SetRestoreOptions)."""
        self._set("restore_options", options)

    def set_additional_restores(self, additional: bool) -> None:
        """True on every restore of a chain but the last (SetAdditionalRestores)."""
        self._set("additional_restores", additional)

    def set_selected_for_restore(self, selected: bool) -> None:
        """Select the component for restore (SetSelectedForRestore)."""
        self._set("selected_for_restore", selected)

    def set_file_restore_status(self, status: FileRestoreStatus) -> None:
        """Record how much of the component a restore wrote (SetFileRestoreStatus)."""
        self._set("file_restore_status", _enum(FileRestoreStatus, status, "set_file_restore_status"))

    def add_new_target(self, path: str, filespec: str, recursive: bool, alternate_path: str) -> NewTarget:
        """Restore matching files to `alternate_path` (AddNewTarget)."""
        return self._append("new_targets", "NEW_TARGET", NewTarget(
            path=path, filespec=filespec, recursive=recursive, alternate_path=alternate_path))

    def set_ranges_file_path(self, partial_file_index: int, path: str) -> None:
        """Say where the ranges file of partial file `partial_file_index` was restored (SetRangesFilePath)."""
        if not 0 <= partial_file_index < len(self.partial_files):
            raise DocumentError(f"COMPONENT {self.full_path!r}: no partial file {partial_file_index} "
                                f"(it has {len(self.partial_files)})")
        partial = self.partial_files[partial_file_index]
        if not partial.uses_ranges_file:
            raise DocumentError(f"COMPONENT {self.full_path!r}: partial file {partial_file_index} lists its "
                                "ranges directly; it has no ranges file")
        replacement = dataclasses.replace(partial, ranges_file_path=path)
        codec.check_tree(replacement, f"COMPONENT {self.full_path!r}/PARTIAL_FILES[{partial_file_index + 1}]")
        self.partial_files[partial_file_index] = replacement

    def add_restore_subcomponent(self, logical_path: str, name: str, repair: bool = False
                                 ) -> RestoreSubcomponent:
        """Restore only this subcomponent of the selected set (AddRestoreSubcomponent)."""
        return self._append("restore_subcomponents", "RESTORE_SUBCOMPONENT", RestoreSubcomponent(
            logical_path=logical_path, component_name=name, repair=repair))

    def add_alternative_location_mapping(self, path: str, filespec: str, recursive: bool,
                                         destination: str) -> AlternateLocationMapping:
        """Record where matching files were really restored (AddAlternativeLocationMapping)."""
        mapping = AlternateLocationMapping(path=path, filespec=filespec, recursive=recursive,
                                           alternate_path=destination)
        return self._append("alternate_location_mappings", "ALTERNATE_LOCATION_MAPPING", mapping)


def _enum(cls: Any, value: Any, where: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        raise DocumentError(f"{where}: {value!r} is not a {cls.__name__}") from None


@dataclasses.dataclass(kw_only=True)
class WriterComponents:
    """The selected components of one writer instance (WRITER_COMPONENTS)."""

    instance_id: uuid.UUID = attr("instanceId")
    writer_id: uuid.UUID = attr("writerId")
    components: list[ComponentState] = children("COMPONENT")

    def get_component(self, logical_path: str, name: str) -> ComponentState | None:
        """The component with this logical path and name, or None."""
        for component in self.components:
            if component.logical_path == logical_path and component.name == name:
                return component
        return None

    def _check_rules(self, where: str, scalars: bool) -> None:
        seen: set[tuple[str, str]] = set()
        for index, component in enumerate(self.components, 1):
            key = (component.logical_path, component.name)
            if key in seen:
                raise DocumentError(
                    f"{where}/COMPONENT[{index}]: duplicate component {component.full_path!r}")
            seen.add(key)


@dataclasses.dataclass(kw_only=True)
class SnapshotDescription:
    """One snapshot of the set: its id, volume, the protected tree and the device object (browser path)."""

    snapshot_id: uuid.UUID = attr("snapshotId")
    volume_name: str = attr("volumeName", check=_check_volume_name)
    original_volume_name: str = attr("originalVolumeName", check=check_path)
    device_object: str = attr("deviceObject", default="", check=check_optional_path)
    creation_time: int = attr("creationTime", default=0)


@dataclasses.dataclass(kw_only=True)
class SnapshotSetDescription:
    """The snapshot set a backup was taken from (SNAPSHOT_SET_DESCRIPTION)."""

    snapshot_set_id: uuid.UUID = attr("snapshotSetId")
    description: str = attr("description", default="")
    creation_time: int = attr("creationTime", default=0)
    snapshots: list[SnapshotDescription] = children("SNAPSHOT_DESCRIPTION")

    def _check_rules(self, where: str, scalars: bool) -> None:
        ids: set[uuid.UUID] = set()
        volumes: set[str] = set()
        for index, snap in enumerate(self.snapshots, 1):
            if snap.snapshot_id in ids:
                raise DocumentError(
                    f"{where}/SNAPSHOT_DESCRIPTION[{index}]: duplicate snapshot id {snap.snapshot_id}")
            if snap.volume_name in volumes:
                raise DocumentError(
                    f"{where}/SNAPSHOT_DESCRIPTION[{index}]: volume {snap.volume_name!r} is in the set twice")
            ids.add(snap.snapshot_id)
            volumes.add(snap.volume_name)


@dataclasses.dataclass(kw_only=True)
class BackupComponents:
    """A Backup Components Document: backup state, context, snapshot set, selected components per writer."""

    select_components: bool = attr("selectComponents", default=True)
    bootable_system_state_backup: bool = attr("bootableSystemStateBackup", default=False)
    backup_type: BackupType = attr("backupType", default=BackupType.FULL)
    partial_file_support: bool = attr("partialFileSupport", default=False)
    context: SnapshotContext = attr("context", default=SnapshotContext.BACKUP)
    restore_type: RestoreType = attr("restoreType", default=RestoreType.UNDEFINED)
    snapshot_set: SnapshotSetDescription | None = child("SNAPSHOT_SET_DESCRIPTION")
    writers: list[WriterComponents] = children("WRITER_COMPONENTS")

    @property
    def snapshot_set_id(self) -> uuid.UUID | None:
        """The id of the snapshot set, once `start_snapshot_set` was called."""
        return self.snapshot_set.snapshot_set_id if self.snapshot_set is not None else None

    # ---- requester calls ---------------------------------------------------------------------------------

    def set_context(self, context: SnapshotContext) -> None:
        """Choose the snapshot context (SetContext)."""
        self.context = _enum(SnapshotContext, context, "set_context")

    def set_backup_state(self, select_components: bool, bootable_system_state_backup: bool,
                         backup_type: BackupType, partial_file_support: bool = False) -> None:
        """Set how the backup is run (SetBackupState)."""
        for name, value in (("select_components", select_components),
                            ("bootable_system_state_backup", bootable_system_state_backup),
                            ("partial_file_support", partial_file_support)):
            if not isinstance(value, bool):
                raise DocumentError(f"set_backup_state: {name} must be bool, not {type(value).__name__}")
        self.backup_type = _enum(BackupType, backup_type, "set_backup_state")
        self.select_components = select_components
        self.bootable_system_state_backup = bootable_system_state_backup
        self.partial_file_support = partial_file_support

    def set_restore_state(self, restore_type: RestoreType) -> None:
        """Set the kind of restore (SetRestoreState)."""
        self.restore_type = _enum(RestoreType, restore_type, "set_restore_state")

    def start_snapshot_set(self, snapshot_set_id: uuid.UUID, *, description: str = "",
                           creation_time: int = 0) -> SnapshotSetDescription:
        """Record the snapshot set this backup uses (StartSnapshotSet)."""
        snapshot_set = SnapshotSetDescription(snapshot_set_id=snapshot_set_id, description=description,
                                              creation_time=creation_time)
        codec.check_tree(snapshot_set, "SNAPSHOT_SET_DESCRIPTION")
        self.snapshot_set = snapshot_set
        return snapshot_set

    def add_snapshot(self, snapshot_id: uuid.UUID, volume_name: str, original_volume_name: str, *,
                     device_object: str = "", creation_time: int = 0) -> SnapshotDescription:
        """Record one snapshot of the set (AddToSnapshotSet, then its properties after DoSnapshotSet)."""
        if self.snapshot_set is None:
            raise DocumentError("add_snapshot: no snapshot set (call start_snapshot_set first)")
        snap = SnapshotDescription(snapshot_id=snapshot_id, volume_name=volume_name,
                                   original_volume_name=original_volume_name, device_object=device_object,
                                   creation_time=creation_time)
        codec.check_tree(snap, "SNAPSHOT_DESCRIPTION")
        self.snapshot_set.snapshots.append(snap)
        try:
            codec.check_tree(self.snapshot_set, "SNAPSHOT_SET_DESCRIPTION")
        except DocumentError:
            self.snapshot_set.snapshots.pop()
            raise
        return snap

    def get_writer(self, instance_id: uuid.UUID) -> WriterComponents | None:
        """The WRITER_COMPONENTS of a writer instance, or None."""
        for writer in self.writers:
            if writer.instance_id == instance_id:
                return writer
        return None

    def add_component(self, instance_id: uuid.UUID, writer_id: uuid.UUID, component_type: ComponentType,
                      logical_path: str, name: str) -> ComponentState:
        """Select a component of a writer instance (AddComponent); it must not be selected already."""
        ctype = _enum(ComponentType, component_type, "add_component")
        state = ComponentState(logical_path=logical_path, name=name, type=ctype)
        codec.check_tree(state, "COMPONENT")
        writer = self.get_writer(instance_id)
        if writer is None:
            writer = WriterComponents(instance_id=instance_id, writer_id=writer_id)
            codec.check_tree(writer, "WRITER_COMPONENTS")
            self.writers.append(writer)
        elif writer.writer_id != writer_id:
            raise DocumentError(f"add_component: writer instance {instance_id} belongs to writer "
                                f"{writer.writer_id}, not {writer_id}")
        if writer.get_component(logical_path, name) is not None:
            raise DocumentError(f"add_component: component {state.full_path!r} of writer instance "
                                f"{instance_id} is already selected")
        writer.components.append(state)
        return state

    def get_component(self, instance_id: uuid.UUID, logical_path: str, name: str) -> ComponentState | None:
        """A selected component of a writer instance, or None."""
        writer = self.get_writer(instance_id)
        return writer.get_component(logical_path, name) if writer is not None else None

    def component(self, instance_id: uuid.UUID, logical_path: str, name: str) -> ComponentState:
        """A selected component of a writer instance; `DocumentError` if it is not in the document."""
        found = self.get_component(instance_id, logical_path, name)
        if found is None:
            raise DocumentError(f"no component {full_path(logical_path, name)!r} of writer instance "
                                f"{instance_id} in the backup components document")
        return found

    def iter_components(self) -> Iterator[tuple[WriterComponents, ComponentState]]:
        """Every (writer, component) pair, in document order."""
        for writer in self.writers:
            for component in writer.components:
                yield writer, component

    # ---- checking and conversion -------------------------------------------------------------------------

    def validate(self) -> None:
        """Check every rule of the document; raise `DocumentError` naming the first thing wrong."""
        codec.check_tree(self, "BACKUP_COMPONENTS")

    def _check_rules(self, where: str, scalars: bool) -> None:
        seen: set[uuid.UUID] = set()
        for index, writer in enumerate(self.writers, 1):
            if writer.instance_id in seen:
                raise DocumentError(
                    f"{where}/WRITER_COMPONENTS[{index}]: writer instance {writer.instance_id} appears twice")
            seen.add(writer.instance_id)

    def to_xml(self) -> str:
        """The document as XML text (validated first, so it can always be read back)."""
        self.validate()
        root = codec.to_node(self, "BACKUP_COMPONENTS")
        root.attrib = {"version": BCD_VERSION, **root.attrib}
        return xmlsafe.serialize(root)

    @classmethod
    def from_xml(cls, data: str | bytes, limits: XmlLimits = DEFAULT_LIMITS) -> BackupComponents:
        """Read a BCD from untrusted XML; raise `DocumentError` for anything unsafe or invalid."""
        root = xmlsafe.parse(data, limits)
        codec.check_root(root, "BACKUP_COMPONENTS", "version", BCD_VERSION)
        doc = codec.from_node(cls, root, "BACKUP_COMPONENTS", extra_attrs=frozenset({"version"}))
        codec.check_tree(doc, "BACKUP_COMPONENTS", scalars=False)
        return doc

    def to_dict(self) -> dict[str, Any]:
        """The document as a JSON-able dict (field names as keys), for the wire protocol."""
        self.validate()
        return codec.to_plain(self)

    @classmethod
    def from_dict(cls, data: Any) -> BackupComponents:
        """Read a dict made by `to_dict` (untrusted: checked as strictly as XML)."""
        doc = codec.from_plain(cls, data, "backup_components")
        doc.validate()
        return doc
