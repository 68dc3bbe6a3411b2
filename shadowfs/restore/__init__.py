"""Restore: a verified chain of images applied to a target that it never leaves.

- `engine`: apply a chain in order, confined to the target; per-image hooks
- `job`: the VSS restore sequence: PreRestore, the engine, PostRestore; new and directed targets
"""
