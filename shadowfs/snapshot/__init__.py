"""shadowfs.snapshot."""
