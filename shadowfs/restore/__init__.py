"""Restore: a verified chain of images applied to a target that it never leaves; and a revert, a
volume's paths put back in place from one of its snapshots.

- `engine`: apply a chain in order, confined to the target; per-image hooks
- `job`: the VSS restore sequence: PreRestore, the engine, PostRestore; new and directed targets
- `putback`: one object's owner, mode, xattrs and times, special files made (engine and revert)
- `revert`: a `snapshot.revertplan` carried out through the volume's live mount
"""
