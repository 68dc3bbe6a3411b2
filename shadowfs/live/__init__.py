"""shadowfs.live."""
