"""shadowfs.restore."""
