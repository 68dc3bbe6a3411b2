"""Soak tests: the long randomized runs (marked `soak`), deselected unless asked for.

`tools/test --soak` (or `pytest --soak`, or SHADOWFS_SOAK=1) adds them to the run;
`tools/test --soak tests/soak` runs only them.
"""
