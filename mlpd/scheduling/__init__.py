"""Who runs where and when, and who has used what: the scheduler (pure, clock-free), quotas,
priority classes, per-member resource caps, GPU state and the GPU-hour ledger.

May import: the top-level core (store, config, errors, jobs' state table) and runtime/gpus. Not
kinds/, serving/, tracking/, web/ or workers/: a kind's rules reach the scheduler through the
kind interface.
"""
