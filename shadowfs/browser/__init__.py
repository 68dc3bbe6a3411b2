"""shadowfs.browser."""
