"""Ops tests: FUSE handler objects (pyfuse3 `Operations`) called directly, without a mount.

What the kernel never lets through a read-only mount, and bookkeeping (known
nodes, forget) that only direct calls can check.
"""
