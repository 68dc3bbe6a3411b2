"""The diff area of a volume: where pre-images live (design §3).

- `schema`: the on-disk format, the one place that defines keys: databases, key and value layouts,
  block geometry, file kinds, the format version
- `area`: one volume's LMDB environment: snapshot records, pre-image lookups (read rule), snapshot
  deletion (delete rule), size accounting, graveyard records
- `provenance`: who made each captured change: author records beside their pre-images (design §3.14)
- `blockstore`: `blocks.dat` beside the environment: the bytes of captured blocks, punched out when
  freed

No pyfuse3, no trio: every method takes the caller's LMDB transaction.
"""
