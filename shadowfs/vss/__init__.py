"""shadowfs.vss."""
