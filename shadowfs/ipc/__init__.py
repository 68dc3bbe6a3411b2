"""shadowfs.ipc."""
