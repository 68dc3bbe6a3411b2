"""shadowfs.backup."""
