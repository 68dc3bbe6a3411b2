"""Daemon tests: a real `shadowfs daemon` process (the `daemon` fixture, tests.support.daemon).

Supervision, the CLI socket, the VSS service with real writer processes, the
requester library, the SQLite writer, a fuzzer on the socket, and the CLI's
error contract (also with no daemon running).
"""
