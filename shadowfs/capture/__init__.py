"""shadowfs.capture."""
