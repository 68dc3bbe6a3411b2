"""End-to-end tests: the CLI in subprocesses against a real daemon, volumes mounted in place.

Randomized snapshot workloads checked against manifests, racing readers and
writers, kill -9 of a mount process, backup jobs and restores through
`shadowfs backup` / `shadowfs restore`.
"""
