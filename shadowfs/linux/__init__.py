"""shadowfs.linux."""
