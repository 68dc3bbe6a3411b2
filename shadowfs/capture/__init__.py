"""The capture path: before a change is applied, what it replaces is stored and made durable.

Data flow (design §3.1)::

    live mount handler ──plan──▶ planner ──Capture──▶ committer thread ──txn──▶ engine ──▶ diff area
          │ (waits for the commit)                         (group commit, one fsync)
          └──apply one call──▶ backing directory   (graveyard: when a last name goes)

- `planner`: does this change need a pre-image, and which? (cache, read transactions only)
- `engine`: the write rule: stores each needed pre-image inside a committer transaction
- `committer`: group commits: one thread, one LMDB write transaction for many jobs
- `graveyard`: objects a snapshot still sees keep a name after losing their last one
- `provenance`: a change's caller, made into its author record only when a pre-image is stored

No pyfuse3, no trio: the live mount and the core tests drive the same code.
"""
