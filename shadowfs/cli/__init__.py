"""shadowfs.cli."""
