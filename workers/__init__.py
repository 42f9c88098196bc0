"""The worker process: a huey consumer (SQLite-backed) plus the reconcile loop."""
