"""Helpers for the DDP tests: the server's decision log of a job, and the LRs it dictates (shared
with the other test folders)."""

from shared_testlib import decisions, lr_history  # noqa: F401
