"""Core tests: real LMDB diff areas and the capture/read model, without FUSE.

The capture engine on a plain backing directory (`tests.support.coresim`),
snapshot views and change detection driven directly, and the backup, media
and restore engines on plain directories. Also what finds changes that
bypassed a live mount (`linux.fanotify` watches, `linux.ctimescan` scans),
on plain directories with the real kernel and real child processes.
"""
