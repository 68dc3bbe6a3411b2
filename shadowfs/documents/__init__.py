"""VSS documents for shadowfs: Writer Metadata Documents, Backup Components Documents, byte ranges.

Data flow:

    writer (Identify) --WriterMetadata.create/add_*--> WMD --to_dict--> daemon --> requester
    requester --BackupComponents.add_component/set_*--> BCD --to_dict--> writers (events)
    writers --ComponentState.set_backup_stamp/add_partial_file/...--> BCD --> requester
    requester --to_xml--> backup media --from_xml--> restore

Modules:

| module | job |
|---|---|
| `errors` | `DocumentError`, `RangeError` |
| `enums` | VSS enumerations and flags (backup types, states, failures, schema bits, VSS_FSBT_* masks) |
| `rules` | value rules: paths, wildcard file specs (`filespec_matches`), logical paths, names, text |
| `ranges` | range strings and binary ranges files (vss §12) |
| `xmlsafe` | safe parsing of untrusted XML (no DTD, size/depth/count caps), plain serialisation |
| `codec` | dataclass <-> XML element <-> plain dict, driven by field metadata |
| `wmd` | `WriterMetadata` and its parts, the writer's builder API |
| `bcd` | `BackupComponents` and its parts, the per-component calls |

Invariants: a document that passes `validate()` always serialises, and
`X.from_xml(doc.to_xml()) == doc` and `X.from_dict(doc.to_dict()) == doc`; a
document read from XML or a dict has passed `validate()`; every failure is a
`DocumentError` (or its subclass `RangeError`) whose message names the element,
attribute and rule. Element and attribute names are those of VSS where the
seeds give them; shadowfs additions are listed in the `wmd`, `bcd` and `enums`
docstrings.
"""

from shadowfs.documents.bcd import (
    BCD_VERSION,
    BackupComponents,
    ComponentState,
    DifferencedFile,
    DirectedTarget,
    NewTarget,
    PartialFile,
    RestoreSubcomponent,
    SnapshotDescription,
    SnapshotSetDescription,
    WriterComponents,
)
from shadowfs.documents.enums import (
    DEFAULT_FILESPEC_BACKUP_TYPE,
    BackupSchema,
    BackupType,
    ComponentType,
    FileRestoreStatus,
    FileSpecBackupType,
    RestoreMethodType,
    RestoreTarget,
    RestoreType,
    RollForwardType,
    SnapshotContext,
    SourceType,
    UsageType,
    WriterFailure,
    WriterRestoreCondition,
    WriterState,
)
from shadowfs.documents.errors import DocumentError, RangeError
from shadowfs.documents.ranges import (
    ByteRange,
    check_directed_ranges,
    check_range_string,
    decode_ranges_file,
    encode_ranges_file,
    format_range_string,
    parse_range_string,
    ranges_file_path,
    ranges_file_reference,
    read_ranges_fd,
    read_ranges_file,
    resolve_ranges,
    total_length,
    validate_ranges,
    write_ranges_file,
)
from shadowfs.documents.rules import filespec_matches, full_path, has_wildcard, is_under
from shadowfs.documents.wmd import (
    WMD_VERSION,
    AlternateLocationMapping,
    Component,
    ComponentDependency,
    ExcludedFile,
    FileSpec,
    RestoreMethod,
    WriterIdentity,
    WriterMetadata,
)
from shadowfs.documents.xmlsafe import DEFAULT_LIMITS, XmlLimits

__all__ = [
    "BCD_VERSION", "DEFAULT_FILESPEC_BACKUP_TYPE", "DEFAULT_LIMITS", "WMD_VERSION",
    "AlternateLocationMapping", "BackupComponents", "BackupSchema", "BackupType", "ByteRange", "Component",
    "ComponentDependency", "ComponentState", "ComponentType", "DifferencedFile", "DirectedTarget",
    "DocumentError", "ExcludedFile", "FileRestoreStatus", "FileSpec", "FileSpecBackupType", "NewTarget",
    "PartialFile", "RangeError", "RestoreMethod", "RestoreMethodType", "RestoreSubcomponent", "RestoreTarget",
    "RestoreType", "RollForwardType", "SnapshotContext", "SnapshotDescription", "SnapshotSetDescription",
    "SourceType", "UsageType", "WriterComponents", "WriterFailure", "WriterIdentity", "WriterMetadata",
    "WriterRestoreCondition", "WriterState", "XmlLimits",
    "check_directed_ranges", "check_range_string", "decode_ranges_file", "encode_ranges_file",
    "filespec_matches", "format_range_string", "full_path", "has_wildcard", "is_under", "parse_range_string",
    "ranges_file_path", "ranges_file_reference", "read_ranges_fd", "read_ranges_file", "resolve_ranges",
    "total_length", "validate_ranges", "write_ranges_file",
]
