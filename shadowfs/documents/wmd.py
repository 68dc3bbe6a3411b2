"""The Writer Metadata Document (WMD): what a writer declares in Identify, and its builder API.

A writer describes itself (identity), its components (databases with data and
log files, file groups with file lists, grouped into component sets by logical
path), the files that must never be backed up, how it is restored, and the
backup schema (backup types and restore features) it supports. The requester
reads it to build the backup set and keeps it on the backup media.

XML form (VSS names; every value is an attribute, booleans are yes/no):

    <WRITER_METADATA version="1.1">
      <IDENTIFICATION writerId instanceId friendlyName instanceName usage dataSource/>
      <BACKUP_SCHEMA differential="yes" incremental="no" .../>     one attribute per BackupSchema bit
      <BACKUP_LOCATIONS>
        <DATABASE logicalPath componentName caption restoreMetadata notifyOnBackupComplete
                  selectable selectableForRestore>
          <DATABASE_FILES path filespec recursive alternatePath filespecBackupType/>
          <DATABASE_LOGFILES .../>
          <DEPENDENCY writerId logicalPath componentName/>
        </DATABASE>
        <FILE_GROUP ...same attributes...>
          <FILE_LIST path filespec recursive alternatePath filespecBackupType/>
        </FILE_GROUP>
        <EXCLUDE_FILES path filespec recursive/>
      </BACKUP_LOCATIONS>
      <RESTORE_METHOD method service userProcedure writerRestore rebootRequired>
        <ALTERNATE_LOCATION_MAPPING path filespec recursive alternatePath/>
      </RESTORE_METHOD>
    </WRITER_METADATA>

Names VSS does not give are shadowfs choices in the VSS style (vss §15): the
`<BACKUP_SCHEMA>` element with one yes/no attribute per bit (names in
`enums.BACKUP_SCHEMA_XML_NAMES`), `<DEPENDENCY>`, `instanceName`,
`restoreMetadata`, `caption`, and `recursive`/`alternatePath` on database file
specs. Logical paths use backslashes as in VSS (`Databases\\Sales`); file
spec paths are absolute Linux paths.

Invariants (checked by `validate()`, by every builder method, by `to_xml` and
by `from_xml`/`from_dict`): no two components share a logical path and name;
a database has no FILE_LIST and a file group no DATABASE_FILES/LOGFILES; every
path is absolute with no `..`; every file spec is a valid wildcard; every
string is representable in XML. `from_xml(doc.to_xml()) == doc` and
`from_dict(doc.to_dict()) == doc` for every valid document.
"""

from __future__ import annotations

import dataclasses
import posixpath
import uuid
from typing import Any

from shadowfs.documents import codec, xmlsafe
from shadowfs.documents.codec import attr, children, plain
from shadowfs.documents.enums import (
    BACKUP_SCHEMA_XML_NAMES,
    DEFAULT_FILESPEC_BACKUP_TYPE,
    BackupSchema,
    ComponentType,
    FileSpecBackupType,
    RestoreMethodType,
    SourceType,
    UsageType,
    WriterRestoreCondition,
)
from shadowfs.documents.errors import DocumentError
from shadowfs.documents.rules import (
    check_component_name,
    check_filespec,
    check_logical_path,
    check_optional_path,
    check_path,
    filespec_matches,
    full_path,
    is_under,
)
from shadowfs.documents.xmlsafe import DEFAULT_LIMITS, Node, XmlLimits

WMD_VERSION = "1.1"
_COMPONENT_TAGS = {ComponentType.DATABASE: "DATABASE", ComponentType.FILEGROUP: "FILE_GROUP"}
_TAG_TYPES = {tag: ctype for ctype, tag in _COMPONENT_TAGS.items()}


def _check_nonempty(value: str) -> None:
    if not value:
        raise DocumentError("must not be empty")


def _spec_covers(spec_path: str, filespec: str, recursive: bool, file_path: str) -> bool:
    directory, name = posixpath.split(file_path)
    base = spec_path.rstrip("/") or "/"
    if directory != base and not (recursive and directory.startswith(base.rstrip("/") + "/")):
        return False
    return filespec_matches(filespec, name)


@dataclasses.dataclass(kw_only=True)
class WriterIdentity:
    """Who the writer is: class id, instance id, names, usage and data source (IDENTIFICATION)."""

    writer_id: uuid.UUID = attr("writerId")
    instance_id: uuid.UUID = attr("instanceId")
    friendly_name: str = attr("friendlyName", check=_check_nonempty)
    instance_name: str = attr("instanceName", default="")
    usage: UsageType = attr("usage", default=UsageType.USER_DATA)
    data_source: SourceType = attr("dataSource", default=SourceType.OTHER)


@dataclasses.dataclass(kw_only=True)
class FileSpec:
    """A set of files: directory `path`, wildcard `filespec`, `recursive`, where to read it at backup
    time (`alternate_path`, empty for `path` itself) and the VSS_FSBT_* mask."""

    path: str = attr("path", check=check_path)
    filespec: str = attr("filespec", check=check_filespec)
    recursive: bool = attr("recursive", default=False)
    alternate_path: str = attr("alternatePath", default="", check=check_optional_path)
    backup_type_mask: FileSpecBackupType = attr("filespecBackupType", default=DEFAULT_FILESPEC_BACKUP_TYPE)

    def covers(self, file_path: str) -> bool:
        """Whether the absolute `file_path` is one of the files this spec names."""
        return _spec_covers(self.path, self.filespec, self.recursive, file_path)


@dataclasses.dataclass(kw_only=True)
class ExcludedFile:
    """Files never to back up, whatever is selected (EXCLUDE_FILES)."""

    path: str = attr("path", check=check_path)
    filespec: str = attr("filespec", check=check_filespec)
    recursive: bool = attr("recursive", default=False)

    def covers(self, file_path: str) -> bool:
        """Whether the absolute `file_path` is excluded by this spec."""
        return _spec_covers(self.path, self.filespec, self.recursive, file_path)


@dataclasses.dataclass(kw_only=True)
class AlternateLocationMapping:
    """Restore files matching path/filespec to `alternate_path` instead (ALTERNATE_LOCATION_MAPPING)."""

    path: str = attr("path", check=check_path)
    filespec: str = attr("filespec", check=check_filespec)
    recursive: bool = attr("recursive", default=False)
    alternate_path: str = attr("alternatePath", check=check_path)

    def covers(self, file_path: str) -> bool:
        """Whether the absolute `file_path` is moved by this mapping."""
        return _spec_covers(self.path, self.filespec, self.recursive, file_path)


@dataclasses.dataclass(kw_only=True)
class ComponentDependency:
    """This component needs another (maybe another writer's) component in the same backup (DEPENDENCY)."""

    writer_id: uuid.UUID = attr("writerId")
    logical_path: str = attr("logicalPath", default="", check=check_logical_path)
    component_name: str = attr("componentName", check=check_component_name)


@dataclasses.dataclass(kw_only=True)
class Component:
    """A database or file group a writer declares (DATABASE / FILE_GROUP).

    Components form component sets through their logical paths: a component
    whose logical path equals, or lies under, another's full path
    (`logical_path\\name`) is its subcomponent.
    """

    type: ComponentType = plain()
    logical_path: str = attr("logicalPath", default="", check=check_logical_path)
    name: str = attr("componentName", check=check_component_name)
    caption: str = attr("caption", default="")
    restore_metadata: bool = attr("restoreMetadata", default=False)
    notify_on_backup_complete: bool = attr("notifyOnBackupComplete", default=False)
    selectable_for_backup: bool = attr("selectable", default=False)
    selectable_for_restore: bool = attr("selectableForRestore", default=False)
    database_files: list[FileSpec] = children("DATABASE_FILES")
    log_files: list[FileSpec] = children("DATABASE_LOGFILES")
    files: list[FileSpec] = children("FILE_LIST")
    dependencies: list[ComponentDependency] = children("DEPENDENCY")

    @property
    def full_path(self) -> str:
        """`logical_path\\name` (or `name` at the root): the component's identity within its writer."""
        return full_path(self.logical_path, self.name)

    @property
    def all_file_specs(self) -> list[FileSpec]:
        """Database files, log files and file lists, in that order."""
        return [*self.database_files, *self.log_files, *self.files]

    def _check_rules(self, where: str, scalars: bool) -> None:
        if self.type is ComponentType.DATABASE and self.files:
            raise DocumentError(f"{where}: database component {self.full_path!r} has FILE_LIST entries")
        if self.type is ComponentType.FILEGROUP and (self.database_files or self.log_files):
            raise DocumentError(
                f"{where}: file group {self.full_path!r} has DATABASE_FILES or DATABASE_LOGFILES entries")


@dataclasses.dataclass(kw_only=True)
class RestoreMethod:
    """How the writer's data is restored (RESTORE_METHOD)."""

    method: RestoreMethodType = attr("method", default=RestoreMethodType.UNDEFINED)
    service: str = attr("service", default="")
    user_procedure: str = attr("userProcedure", default="")
    writer_restore: WriterRestoreCondition = attr("writerRestore", default=WriterRestoreCondition.UNDEFINED)
    reboot_required: bool = attr("rebootRequired", default=False)


@dataclasses.dataclass(kw_only=True)
class WriterMetadata:
    """A Writer Metadata Document: identity, components, exclusions, restore method, schema.

    Build it in Identify with `WriterMetadata.create(...)` and the `add_*` /
    `set_*` methods; read a saved one with `from_xml` or `from_dict`.
    """

    identity: WriterIdentity = plain()
    components: list[Component] = plain(default_factory=list)
    excluded_files: list[ExcludedFile] = plain(default_factory=list)
    restore_method: RestoreMethod = plain(default_factory=RestoreMethod)
    alternate_location_mappings: list[AlternateLocationMapping] = plain(default_factory=list)
    backup_schema: BackupSchema = plain(default=BackupSchema.UNDEFINED)

    # ---- building (IVssCreateWriterMetadata) ------------------------------------------------------------

    @classmethod
    def create(cls, writer_id: uuid.UUID | str, instance_id: uuid.UUID | str, friendly_name: str, *,
               instance_name: str = "", usage: UsageType = UsageType.USER_DATA,
               data_source: SourceType = SourceType.OTHER) -> WriterMetadata:
        """A new, empty document for one writer instance."""
        try:
            identity = WriterIdentity(
                writer_id=uuid.UUID(str(writer_id)), instance_id=uuid.UUID(str(instance_id)),
                friendly_name=friendly_name, instance_name=instance_name, usage=UsageType(usage),
                data_source=SourceType(data_source))
        except ValueError as exc:
            raise DocumentError(f"IDENTIFICATION: {exc}") from None
        codec.check_tree(identity, "IDENTIFICATION")
        return cls(identity=identity)

    def add_component(self, component_type: ComponentType, logical_path: str, name: str, *,
                      caption: str = "", restore_metadata: bool = False,
                      notify_on_backup_complete: bool = False, selectable_for_backup: bool = False,
                      selectable_for_restore: bool = False) -> Component:
        """Declare a component; its (logical path, name) must be new."""
        try:
            ctype = ComponentType(component_type)
        except ValueError:
            raise DocumentError(f"add_component: {component_type!r} is not a ComponentType") from None
        component = Component(
            type=ctype, logical_path=logical_path, name=name, caption=caption,
            restore_metadata=restore_metadata, notify_on_backup_complete=notify_on_backup_complete,
            selectable_for_backup=selectable_for_backup, selectable_for_restore=selectable_for_restore)
        codec.check_tree(component, _COMPONENT_TAGS[ctype])
        if self.get_component(logical_path, name) is not None:
            raise DocumentError(f"duplicate component {component.full_path!r}: it is already declared")
        self.components.append(component)
        return component

    def _add_spec(self, what: str, tag: str, logical_path: str, name: str, ctype: ComponentType,
                  spec: FileSpec) -> FileSpec:
        component = self.get_component(logical_path, name)
        if component is None:
            raise DocumentError(
                f"{what}: no component {full_path(logical_path, name)!r} (add_component first)")
        if component.type is not ctype:
            raise DocumentError(f"{what}: component {component.full_path!r} is a {component.type.value}, "
                                f"not a {ctype.value}")
        codec.check_tree(spec, f"{_COMPONENT_TAGS[ctype]} {component.full_path!r}/{tag}")
        getattr(component, {"FILE_LIST": "files", "DATABASE_FILES": "database_files",
                            "DATABASE_LOGFILES": "log_files"}[tag]).append(spec)
        return spec

    def add_files(self, logical_path: str, group_name: str, path: str, filespec: str, *,
                  recursive: bool = False, alternate_path: str = "",
                  backup_type_mask: FileSpecBackupType = DEFAULT_FILESPEC_BACKUP_TYPE) -> FileSpec:
        """Add a file spec to a file group (AddFilesToFileGroup)."""
        spec = FileSpec(path=path, filespec=filespec, recursive=recursive, alternate_path=alternate_path,
                        backup_type_mask=backup_type_mask)
        return self._add_spec("add_files", "FILE_LIST", logical_path, group_name, ComponentType.FILEGROUP,
                              spec)

    def add_database_files(self, logical_path: str, database_name: str, path: str, filespec: str, *,
                           backup_type_mask: FileSpecBackupType = DEFAULT_FILESPEC_BACKUP_TYPE,
                           recursive: bool = False, alternate_path: str = "") -> FileSpec:
        """Add data files to a database component (AddDatabaseFiles; `recursive` and `alternate_path`
        are shadowfs additions, vss §15)."""
        spec = FileSpec(path=path, filespec=filespec, recursive=recursive, alternate_path=alternate_path,
                        backup_type_mask=backup_type_mask)
        return self._add_spec("add_database_files", "DATABASE_FILES", logical_path, database_name,
                              ComponentType.DATABASE, spec)

    def add_database_log_files(self, logical_path: str, database_name: str, path: str, filespec: str, *,
                               backup_type_mask: FileSpecBackupType = DEFAULT_FILESPEC_BACKUP_TYPE,
                               recursive: bool = False, alternate_path: str = "") -> FileSpec:
        """Add log files to a database component (AddDatabaseLogFiles); needed for log backups."""
        spec = FileSpec(path=path, filespec=filespec, recursive=recursive, alternate_path=alternate_path,
                        backup_type_mask=backup_type_mask)
        return self._add_spec("add_database_log_files", "DATABASE_LOGFILES", logical_path, database_name,
                              ComponentType.DATABASE, spec)

    def add_exclude_files(self, path: str, filespec: str, recursive: bool = False) -> ExcludedFile:
        """Exclude files from every backup (AddExcludeFiles)."""
        excluded = ExcludedFile(path=path, filespec=filespec, recursive=recursive)
        codec.check_tree(excluded, "EXCLUDE_FILES")
        self.excluded_files.append(excluded)
        return excluded

    def add_component_dependency(self, logical_path: str, name: str, on_writer_id: uuid.UUID | str,
                                 on_logical_path: str, on_component_name: str) -> ComponentDependency:
        """Record that a component depends on another component (AddComponentDependency)."""
        component = self.get_component(logical_path, name)
        if component is None:
            raise DocumentError(f"add_component_dependency: no component {full_path(logical_path, name)!r}")
        try:
            writer = uuid.UUID(str(on_writer_id))
        except ValueError:
            raise DocumentError(f"add_component_dependency: {on_writer_id!r} is not a UUID") from None
        dependency = ComponentDependency(writer_id=writer, logical_path=on_logical_path,
                                         component_name=on_component_name)
        codec.check_tree(dependency, "DEPENDENCY")
        if (writer == self.identity.writer_id and on_logical_path == logical_path
                and on_component_name == name):
            raise DocumentError(
                f"add_component_dependency: component {component.full_path!r} depends on itself")
        component.dependencies.append(dependency)
        return dependency

    def set_restore_method(self, method: RestoreMethodType, *, service: str = "", user_procedure: str = "",
                           writer_restore: WriterRestoreCondition = WriterRestoreCondition.NEVER,
                           reboot_required: bool = False) -> RestoreMethod:
        """Say how the writer is restored (SetRestoreMethod)."""
        try:
            restore = RestoreMethod(method=RestoreMethodType(method), service=service,
                                    user_procedure=user_procedure,
                                    writer_restore=WriterRestoreCondition(writer_restore),
                                    reboot_required=reboot_required)
        except ValueError as exc:
            raise DocumentError(f"set_restore_method: {exc}") from None
        codec.check_tree(restore, "RESTORE_METHOD")
        self.restore_method = restore
        return restore

    def add_alternate_location_mapping(self, path: str, filespec: str, recursive: bool,
                                       destination: str) -> AlternateLocationMapping:
        """Restore matching files to `destination` (AddAlternateLocationMapping)."""
        mapping = AlternateLocationMapping(path=path, filespec=filespec, recursive=recursive,
                                           alternate_path=destination)
        codec.check_tree(mapping, "RESTORE_METHOD/ALTERNATE_LOCATION_MAPPING")
        self.alternate_location_mappings.append(mapping)
        return mapping

    def set_backup_schema(self, schema: BackupSchema | int) -> None:
        """Declare the backup types and restore features supported (SetBackupSchema)."""
        try:
            value = codec.decode_scalar(int(schema), BackupSchema, from_xml=False)
        except (TypeError, ValueError) as exc:
            raise DocumentError(f"set_backup_schema: {schema!r} {exc}") from None
        self.backup_schema = value

    # ---- examining (IVssExamineWriterMetadata) -----------------------------------------------------------

    def get_component(self, logical_path: str, name: str) -> Component | None:
        """The component with this logical path and name, or None."""
        for component in self.components:
            if component.logical_path == logical_path and component.name == name:
                return component
        return None

    def subcomponents(self, component: Component) -> list[Component]:
        """The components of the component set rooted at `component` (not `component` itself)."""
        root = component.full_path
        return [c for c in self.components if c is not component and is_under(c.logical_path, root)]

    def parents(self, component: Component) -> list[Component]:
        """The declared components whose component sets contain `component`, outermost first."""
        found = [c for c in self.components if c is not component and is_under(component.logical_path,
                                                                               c.full_path)]
        return sorted(found, key=lambda c: len(c.full_path))

    def is_excluded(self, file_path: str) -> bool:
        """Whether an absolute file path matches an EXCLUDE_FILES spec (exclusions always win)."""
        return any(e.covers(file_path) for e in self.excluded_files)

    # ---- checking and conversion -------------------------------------------------------------------------

    def _check_dependencies(self, component: Component, where: str) -> None:
        for dep in component.dependencies:
            if (dep.writer_id == self.identity.writer_id and dep.logical_path == component.logical_path
                    and dep.component_name == component.name):
                raise DocumentError(f"{where}: component {component.full_path!r} depends on itself")

    def validate(self) -> None:
        """Check every rule of the document; raise `DocumentError` naming the first thing wrong."""
        codec.check_tree(self, "WRITER_METADATA")

    def _check_rules(self, where: str, scalars: bool) -> None:
        if not isinstance(self.identity, WriterIdentity):
            raise DocumentError(f"{where}: identity must be a WriterIdentity")
        codec.check_tree(self.identity, f"{where}/IDENTIFICATION", scalars)
        seen: dict[tuple[str, str], int] = {}
        counts: dict[str, int] = {}
        for component in self._typed_list("components", Component, where):
            tag = _COMPONENT_TAGS.get(component.type, "COMPONENT")
            counts[tag] = counts.get(tag, 0) + 1
            here = f"{where}/BACKUP_LOCATIONS/{tag}[{counts[tag]}]"
            codec.check_tree(component, here, scalars)
            key = (component.logical_path, component.name)
            if key in seen:
                raise DocumentError(f"{here}: duplicate component {component.full_path!r} "
                                    f"(logical path {component.logical_path!r}, name {component.name!r})")
            seen[key] = 1
            self._check_dependencies(component, here)
        for index, excluded in enumerate(self._typed_list("excluded_files", ExcludedFile, where), 1):
            codec.check_tree(excluded, f"{where}/BACKUP_LOCATIONS/EXCLUDE_FILES[{index}]", scalars)
        if not isinstance(self.restore_method, RestoreMethod):
            raise DocumentError(f"{where}: restore_method must be a RestoreMethod")
        codec.check_tree(self.restore_method, f"{where}/RESTORE_METHOD", scalars)
        for index, mapping in enumerate(self._typed_list("alternate_location_mappings",
                                                         AlternateLocationMapping, where), 1):
            codec.check_tree(mapping, f"{where}/RESTORE_METHOD/ALTERNATE_LOCATION_MAPPING[{index}]", scalars)

    def _typed_list(self, name: str, item_cls: type, where: str) -> list[Any]:
        value = getattr(self, name)
        if not isinstance(value, list) or not all(isinstance(v, item_cls) for v in value):
            raise DocumentError(f"{where}: {name} must be a list of {item_cls.__name__}")
        return value

    def to_xml(self) -> str:
        """The document as XML text (validated first, so it can always be read back)."""
        self.validate()
        root = Node("WRITER_METADATA", {"version": WMD_VERSION})
        root.children.append(codec.to_node(self.identity, "IDENTIFICATION"))
        schema = {name: "yes" if self.backup_schema & bit else "no"
                  for bit, name in BACKUP_SCHEMA_XML_NAMES.items()}
        root.children.append(Node("BACKUP_SCHEMA", schema))
        locations = Node("BACKUP_LOCATIONS")
        for component in self.components:
            locations.children.append(codec.to_node(component, _COMPONENT_TAGS[component.type]))
        locations.children.extend(codec.to_node(e, "EXCLUDE_FILES") for e in self.excluded_files)
        root.children.append(locations)
        method = codec.to_node(self.restore_method, "RESTORE_METHOD")
        method.children.extend(codec.to_node(m, "ALTERNATE_LOCATION_MAPPING")
                               for m in self.alternate_location_mappings)
        root.children.append(method)
        return xmlsafe.serialize(root)

    @classmethod
    def from_xml(cls, data: str | bytes, limits: XmlLimits = DEFAULT_LIMITS) -> WriterMetadata:
        """Read a WMD from untrusted XML; raise `DocumentError` for anything unsafe or invalid."""
        root = xmlsafe.parse(data, limits)
        where = "WRITER_METADATA"
        codec.check_root(root, where, "version", WMD_VERSION)
        for name in root.attrib:
            if name != "version":
                raise DocumentError(f"{where} (line {root.line}): unknown attribute {name!r}")
        parts: dict[str, Node] = {}
        for node in root.children:
            if node.tag not in ("IDENTIFICATION", "BACKUP_SCHEMA", "BACKUP_LOCATIONS", "RESTORE_METHOD"):
                raise DocumentError(f"{where} (line {node.line}): unexpected element <{node.tag}>")
            if node.tag in parts:
                raise DocumentError(f"{where} (line {node.line}): more than one <{node.tag}>")
            parts[node.tag] = node
        if "IDENTIFICATION" not in parts:
            raise DocumentError(f"{where}: required element <IDENTIFICATION> is missing")
        identity = codec.from_node(WriterIdentity, parts["IDENTIFICATION"], f"{where}/IDENTIFICATION")
        doc = cls(identity=identity)
        if "BACKUP_SCHEMA" in parts:
            doc.backup_schema = _schema_from_node(parts["BACKUP_SCHEMA"], f"{where}/BACKUP_SCHEMA")
        if "BACKUP_LOCATIONS" in parts:
            node = parts["BACKUP_LOCATIONS"]
            here = f"{where}/BACKUP_LOCATIONS"
            if node.attrib:
                raise DocumentError(
                    f"{here} (line {node.line}): unknown attribute {next(iter(node.attrib))!r}")
            counts: dict[str, int] = {}
            for sub in node.children:
                counts[sub.tag] = counts.get(sub.tag, 0) + 1
                label = f"{here}/{sub.tag}[{counts[sub.tag]}]"
                if sub.tag in _TAG_TYPES:
                    doc.components.append(codec.from_node(Component, sub, label, type=_TAG_TYPES[sub.tag]))
                elif sub.tag == "EXCLUDE_FILES":
                    doc.excluded_files.append(codec.from_node(ExcludedFile, sub, label))
                else:
                    raise DocumentError(f"{here} (line {sub.line}): unexpected element <{sub.tag}>")
        if "RESTORE_METHOD" in parts:
            node = parts["RESTORE_METHOD"]
            here = f"{where}/RESTORE_METHOD"
            doc.restore_method = codec.from_node(RestoreMethod, node, here,
                                                 extra_children=frozenset({"ALTERNATE_LOCATION_MAPPING"}))
            for index, sub in enumerate(node.children, 1):
                doc.alternate_location_mappings.append(codec.from_node(
                    AlternateLocationMapping, sub, f"{here}/ALTERNATE_LOCATION_MAPPING[{index}]"))
        codec.check_tree(doc, "WRITER_METADATA", scalars=False)
        return doc

    def to_dict(self) -> dict[str, Any]:
        """The document as a JSON-able dict (field names as keys), for the wire protocol."""
        self.validate()
        return codec.to_plain(self)

    @classmethod
    def from_dict(cls, data: Any) -> WriterMetadata:
        """Read a dict made by `to_dict` (untrusted: checked as strictly as XML)."""
        doc = codec.from_plain(cls, data, "writer_metadata")
        doc.validate()
        return doc


def _schema_from_node(node: Node, where: str) -> BackupSchema:
    by_name = {name: bit for bit, name in BACKUP_SCHEMA_XML_NAMES.items()}
    value = BackupSchema.UNDEFINED
    for name, text in node.attrib.items():
        bit = by_name.get(name)
        if bit is None:
            raise DocumentError(f"{where} (line {node.line}): unknown backup schema bit {name!r}")
        if text == "yes":
            value |= bit
        elif text != "no":
            raise DocumentError(
                f"{where} (line {node.line}): attribute {name}={text!r} expected 'yes' or 'no'")
    if node.children:
        raise DocumentError(f"{where} (line {node.line}): unexpected element <{node.children[0].tag}>")
    return value
