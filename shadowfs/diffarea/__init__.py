"""shadowfs.diffarea."""
