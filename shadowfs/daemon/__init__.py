"""shadowfs.daemon."""
