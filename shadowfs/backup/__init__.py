"""Backup jobs: what to back up (writers' components, file specs), and writing the image.

- `fileset`: pure: file specs, wildcards, recursion, exclusions, alternate locations (vss §10)
- `plan`: components, effective backup types, the per-volume plans (vss §8, §10-§12)
- `engine`: one `BackupRequest` (media, a `VolumeSource` per volume, type, base) written as an
  image: full and copy backups, incrementals and differentials from the diff area or by comparison
- `job`: the VSS backup sequence around the engine: writers, a snapshot set, the image,
  BackupComplete
"""
