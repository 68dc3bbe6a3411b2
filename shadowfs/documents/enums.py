"""The VSS enumerations of the documents, with the values their XML and JSON forms carry.

Each `StrEnum` member's value is the exact string written in XML attributes and
in the plain-dict (wire) form; `code` gives the VSS numeric value where VSS has
one, for logs and for readers of the VSS documentation. Each `IntFlag` is
written as its decimal integer (as VSS writes `filespecBackupType="3855"`),
except `BackupSchema`, which the WMD writes as one yes/no attribute per bit
(`BackupSchema.XML_NAMES`).

| Python | VSS | XML values |
|---|---|---|
| `BackupType` | VSS_BACKUP_TYPE (VSS_BT_*) | full incremental differential log copy other |
| `ComponentType` | VSS_COMPONENT_TYPE (VSS_CT_*) | database filegroup |
| `UsageType` | VSS_USAGE_TYPE (VSS_UT_*) | UNDEFINED BOOTABLE_SYSTEM_STATE SYSTEM_SERVICE USER_DATA OTHER |
| `SourceType` | VSS_SOURCE_TYPE (VSS_ST_*) | UNDEFINED TRANSACTION_DB NONTRANSACTION_DB OTHER |
| `RestoreMethodType` | VSS_RESTOREMETHOD_ENUM (VSS_RME_*) | UNDEFINED RESTORE_IF_NOT_THERE ... |
| `WriterRestoreCondition` | VSS_WRITERRESTORE_ENUM (VSS_WRE_*) | undefined never ifReplaceFails always |
| `RestoreTarget` | VSS_RESTORE_TARGET (VSS_RT_*) + NEW | UNDEFINED ORIGINAL ALTERNATE DIRECTED ... NEW |
| `RestoreType` | VSS_RESTORE_TYPE (VSS_RTYPE_*) | undefined by_copy import other |
| `FileRestoreStatus` | VSS_FILE_RESTORE_STATUS (VSS_RS_*) | undefined none all failed |
| `RollForwardType` | VSS_ROLLFORWARD_TYPE (VSS_RF_*) | undefined none all partial |
| `SnapshotContext` | VSS_SNAPSHOT_CONTEXT (VSS_CTX_*) | backup file_share_backup client_accessible ... |
| `WriterState` | VSS_WRITER_STATE (VSS_WS_*) | stable waiting_for_freeze ... failed_at_backup_shutdown |
| `WriterFailure` | VSS_E_WRITERERROR_* | retryable non_retryable timeout ... |
| `BackupSchema` | VSS_BACKUP_SCHEMA (VSS_BS_*) | IntFlag |
| `FileSpecBackupType` | VSS_FILE_SPEC_BACKUP_TYPE (VSS_FSBT_*) | IntFlag |

shadowfs additions, not in VSS: `RestoreTarget.NEW` (the component's files go
to new targets added with `add_new_target`) and
`BackupSchema.MULTIPLE_RESTORE_POINTS` (bit 0x10000: the writer can be restored
to any image of a chain, not only the newest).
"""

from __future__ import annotations

import enum


class BackupType(enum.StrEnum):
    """The kind of backup a requester runs (vss §8.1): which files and whether history is updated."""

    FULL = "full"
    INCREMENTAL = "incremental"
    DIFFERENTIAL = "differential"
    LOG = "log"
    COPY = "copy"
    OTHER = "other"

    @property
    def code(self) -> int:
        """The VSS_BT_* value."""
        return {"full": 1, "incremental": 2, "differential": 3, "log": 4, "copy": 5, "other": 6}[self.value]

    @property
    def updates_history(self) -> bool:
        """False for copy backups (vss §8.1: no backup history is updated), True otherwise."""
        return self is not BackupType.COPY


class ComponentType(enum.StrEnum):
    """A component is a database (data files plus log files) or a file group (file lists)."""

    DATABASE = "database"
    FILEGROUP = "filegroup"

    @property
    def code(self) -> int:
        """The VSS_CT_* value."""
        return 1 if self is ComponentType.DATABASE else 2


class UsageType(enum.StrEnum):
    """What kind of data a writer manages (VSS_UT_*)."""

    UNDEFINED = "UNDEFINED"
    BOOTABLE_SYSTEM_STATE = "BOOTABLE_SYSTEM_STATE"
    SYSTEM_SERVICE = "SYSTEM_SERVICE"
    USER_DATA = "USER_DATA"
    OTHER = "OTHER"


class SourceType(enum.StrEnum):
    """The kind of data store a writer manages (VSS_ST_*)."""

    UNDEFINED = "UNDEFINED"
    TRANSACTION_DB = "TRANSACTION_DB"
    NONTRANSACTION_DB = "NONTRANSACTION_DB"
    OTHER = "OTHER"


class RestoreMethodType(enum.StrEnum):
    """How a writer's files are to be restored (VSS_RME_*)."""

    UNDEFINED = "UNDEFINED"
    RESTORE_IF_NOT_THERE = "RESTORE_IF_NOT_THERE"
    RESTORE_IF_CAN_REPLACE = "RESTORE_IF_CAN_REPLACE"
    STOP_RESTORE_START = "STOP_RESTORE_START"
    RESTORE_TO_ALTERNATE_LOCATION = "RESTORE_TO_ALTERNATE_LOCATION"
    RESTORE_AT_REBOOT = "RESTORE_AT_REBOOT"
    RESTORE_AT_REBOOT_IF_CANNOT_REPLACE = "RESTORE_AT_REBOOT_IF_CANNOT_REPLACE"
    CUSTOM = "CUSTOM"
    RESTORE_STOP_START = "RESTORE_STOP_START"


class WriterRestoreCondition(enum.StrEnum):
    """Whether the writer takes part in restore events (VSS_WRE_*)."""

    UNDEFINED = "undefined"
    NEVER = "never"
    IF_REPLACE_FAILS = "ifReplaceFails"
    ALWAYS = "always"


class RestoreTarget(enum.StrEnum):
    """Where a component is restored (VSS_RT_*, plus NEW for new targets)."""

    UNDEFINED = "UNDEFINED"
    ORIGINAL = "ORIGINAL"
    ALTERNATE = "ALTERNATE"
    DIRECTED = "DIRECTED"
    ORIGINAL_LOCATION = "ORIGINAL_LOCATION"
    NEW = "NEW"


class RestoreType(enum.StrEnum):
    """The kind of restore a requester runs (VSS_RTYPE_*)."""

    UNDEFINED = "undefined"
    BY_COPY = "by_copy"
    IMPORT = "import"
    OTHER = "other"


class FileRestoreStatus(enum.StrEnum):
    """How much of a component's files a restore wrote (VSS_RS_*)."""

    UNDEFINED = "undefined"
    NONE = "none"
    ALL = "all"
    FAILED = "failed"


class RollForwardType(enum.StrEnum):
    """Roll-forward restore kind (VSS_RF_*), meaningful with BackupSchema.ROLLFORWARD_RESTORE."""

    UNDEFINED = "undefined"
    NONE = "none"
    ALL = "all"
    PARTIAL = "partial"


class SnapshotContext(enum.StrEnum):
    """The context of a snapshot set (VSS_CTX_*): lifetime and writer participation."""

    BACKUP = "backup"
    FILE_SHARE_BACKUP = "file_share_backup"
    NAS_ROLLBACK = "nas_rollback"
    APP_ROLLBACK = "app_rollback"
    CLIENT_ACCESSIBLE = "client_accessible"
    CLIENT_ACCESSIBLE_WRITERS = "client_accessible_writers"

    @property
    def involves_writers(self) -> bool:
        """Whether writers take part (VSS: not for file-share backup, NAS rollback, client-accessible)."""
        return self in (SnapshotContext.BACKUP, SnapshotContext.APP_ROLLBACK,
                        SnapshotContext.CLIENT_ACCESSIBLE_WRITERS)

    @property
    def auto_release(self) -> bool:
        """Whether the snapshots go when the requester ends (VSS: backup and file-share backup)."""
        return self in (SnapshotContext.BACKUP, SnapshotContext.FILE_SHARE_BACKUP)


class WriterState(enum.StrEnum):
    """A writer's state in the current sequence (VSS_WS_*)."""

    UNKNOWN = "unknown"
    STABLE = "stable"
    WAITING_FOR_FREEZE = "waiting_for_freeze"
    WAITING_FOR_THAW = "waiting_for_thaw"
    WAITING_FOR_POST_SNAPSHOT = "waiting_for_post_snapshot"
    WAITING_FOR_BACKUP_COMPLETE = "waiting_for_backup_complete"
    FAILED_AT_IDENTIFY = "failed_at_identify"
    FAILED_AT_PREPARE_BACKUP = "failed_at_prepare_backup"
    FAILED_AT_PREPARE_SNAPSHOT = "failed_at_prepare_snapshot"
    FAILED_AT_FREEZE = "failed_at_freeze"
    FAILED_AT_THAW = "failed_at_thaw"
    FAILED_AT_POST_SNAPSHOT = "failed_at_post_snapshot"
    FAILED_AT_BACKUP_COMPLETE = "failed_at_backup_complete"
    FAILED_AT_PRE_RESTORE = "failed_at_pre_restore"
    FAILED_AT_POST_RESTORE = "failed_at_post_restore"
    FAILED_AT_BACKUP_SHUTDOWN = "failed_at_backup_shutdown"

    @property
    def code(self) -> int:
        """The VSS_WS_* value (VSS_WS_UNKNOWN = 0 ... VSS_WS_FAILED_AT_BACKUPSHUTDOWN = 15)."""
        return list(WriterState).index(self)

    @property
    def is_failed(self) -> bool:
        """True for the failed_at_* states."""
        return self.value.startswith("failed_at_")


class WriterFailure(enum.StrEnum):
    """Why a writer failed (VSS_E_WRITERERROR_*)."""

    RETRYABLE = "retryable"
    NON_RETRYABLE = "non_retryable"
    TIMEOUT = "timeout"
    OUT_OF_RESOURCES = "out_of_resources"
    INCONSISTENT_SNAPSHOT = "inconsistent_snapshot"
    PARTIAL_FAILURE = "partial_failure"

    @property
    def vss_name(self) -> str:
        """The VSS error name, e.g. VSS_E_WRITERERROR_NONRETRYABLE."""
        names = {
            "retryable": "RETRYABLE", "non_retryable": "NONRETRYABLE", "timeout": "TIMEOUT",
            "out_of_resources": "OUTOFRESOURCES", "inconsistent_snapshot": "INCONSISTENTSNAPSHOT",
            "partial_failure": "PARTIAL_FAILURE",
        }
        return "VSS_E_WRITERERROR_" + names[self.value]


class BackupSchema(enum.IntFlag):
    """The backup types and restore features a writer supports (VSS_BS_*); full is always supported."""

    UNDEFINED = 0
    DIFFERENTIAL = 0x1
    INCREMENTAL = 0x2
    EXCLUSIVE_INCREMENTAL_DIFFERENTIAL = 0x4
    LOG = 0x8
    COPY = 0x10
    TIMESTAMPED = 0x20
    LAST_MODIFY = 0x40
    LSN = 0x80
    WRITER_SUPPORTS_NEW_TARGET = 0x100
    WRITER_SUPPORTS_RESTORE_WITH_MOVE = 0x200
    INDEPENDENT_SYSTEM_STATE = 0x400
    ROLLFORWARD_RESTORE = 0x1000
    RESTORE_RENAME = 0x2000
    AUTHORITATIVE_RESTORE = 0x4000
    MULTIPLE_RESTORE_POINTS = 0x10000

    def supports(self, backup_type: BackupType) -> bool:
        """Whether a writer with this schema takes `backup_type` as it is (else it gets a full backup)."""
        needed = {
            BackupType.FULL: BackupSchema.UNDEFINED,
            BackupType.INCREMENTAL: BackupSchema.INCREMENTAL,
            BackupType.DIFFERENTIAL: BackupSchema.DIFFERENTIAL,
            BackupType.LOG: BackupSchema.LOG,
            BackupType.COPY: BackupSchema.COPY,
            BackupType.OTHER: BackupSchema.UNDEFINED,
        }[backup_type]
        return (self & needed) == needed


# XML attribute name of each schema bit inside <BACKUP_SCHEMA>, in bit order.
BACKUP_SCHEMA_XML_NAMES: dict[BackupSchema, str] = {
    BackupSchema.DIFFERENTIAL: "differential",
    BackupSchema.INCREMENTAL: "incremental",
    BackupSchema.EXCLUSIVE_INCREMENTAL_DIFFERENTIAL: "exclusiveIncrementalDifferential",
    BackupSchema.LOG: "log",
    BackupSchema.COPY: "copy",
    BackupSchema.TIMESTAMPED: "timestamped",
    BackupSchema.LAST_MODIFY: "lastModify",
    BackupSchema.LSN: "lsn",
    BackupSchema.WRITER_SUPPORTS_NEW_TARGET: "writerSupportsNewTarget",
    BackupSchema.WRITER_SUPPORTS_RESTORE_WITH_MOVE: "writerSupportsRestoreWithMove",
    BackupSchema.INDEPENDENT_SYSTEM_STATE: "independentSystemState",
    BackupSchema.ROLLFORWARD_RESTORE: "rollForwardRestore",
    BackupSchema.RESTORE_RENAME: "restoreRename",
    BackupSchema.AUTHORITATIVE_RESTORE: "authoritativeRestore",
    BackupSchema.MULTIPLE_RESTORE_POINTS: "multipleRestorePoints",
}


class FileSpecBackupType(enum.IntFlag):
    """Per-file-spec mask (VSS_FSBT_*): for which backup types the spec counts, and which need a snapshot.

    The default for a file spec is ALL_BACKUP_REQUIRED | ALL_SNAPSHOT_REQUIRED
    (0xF0F, 3855), as in VSS. A spec counts for a backup type only if its
    *_BACKUP_REQUIRED bit is set (the mask overrides component selectability,
    vss §10.1); a volume whose counted specs have no *_SNAPSHOT_REQUIRED bit for
    the type may be read live.
    """

    NONE = 0
    FULL_BACKUP_REQUIRED = 0x1
    DIFFERENTIAL_BACKUP_REQUIRED = 0x2
    INCREMENTAL_BACKUP_REQUIRED = 0x4
    LOG_BACKUP_REQUIRED = 0x8
    FULL_SNAPSHOT_REQUIRED = 0x100
    DIFFERENTIAL_SNAPSHOT_REQUIRED = 0x200
    INCREMENTAL_SNAPSHOT_REQUIRED = 0x400
    LOG_SNAPSHOT_REQUIRED = 0x800
    CREATED_DURING_BACKUP = 0x10000
    ALL_BACKUP_REQUIRED = 0xF
    ALL_SNAPSHOT_REQUIRED = 0xF00

    def backup_required(self, backup_type: BackupType) -> bool:
        """Whether a spec with this mask counts for `backup_type` (copy and other count as full)."""
        return bool(self & _BACKUP_BIT[backup_type])

    def snapshot_required(self, backup_type: BackupType) -> bool:
        """Whether a spec with this mask needs a snapshot for `backup_type` (copy and other as full)."""
        return bool(self & _SNAPSHOT_BIT[backup_type])


DEFAULT_FILESPEC_BACKUP_TYPE = (FileSpecBackupType.ALL_BACKUP_REQUIRED
                                | FileSpecBackupType.ALL_SNAPSHOT_REQUIRED)

_BACKUP_BIT = {
    BackupType.FULL: FileSpecBackupType.FULL_BACKUP_REQUIRED,
    BackupType.COPY: FileSpecBackupType.FULL_BACKUP_REQUIRED,
    BackupType.OTHER: FileSpecBackupType.FULL_BACKUP_REQUIRED,
    BackupType.DIFFERENTIAL: FileSpecBackupType.DIFFERENTIAL_BACKUP_REQUIRED,
    BackupType.INCREMENTAL: FileSpecBackupType.INCREMENTAL_BACKUP_REQUIRED,
    BackupType.LOG: FileSpecBackupType.LOG_BACKUP_REQUIRED,
}
_SNAPSHOT_BIT = {
    BackupType.FULL: FileSpecBackupType.FULL_SNAPSHOT_REQUIRED,
    BackupType.COPY: FileSpecBackupType.FULL_SNAPSHOT_REQUIRED,
    BackupType.OTHER: FileSpecBackupType.FULL_SNAPSHOT_REQUIRED,
    BackupType.DIFFERENTIAL: FileSpecBackupType.DIFFERENTIAL_SNAPSHOT_REQUIRED,
    BackupType.INCREMENTAL: FileSpecBackupType.INCREMENTAL_SNAPSHOT_REQUIRED,
    BackupType.LOG: FileSpecBackupType.LOG_SNAPSHOT_REQUIRED,
}
