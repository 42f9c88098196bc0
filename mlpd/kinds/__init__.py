"""Workload kinds: what runs in a container, one module per kind.

Each kind (a batch job, a workspace session, a deployment replica) implements the `Kind` interface
in mlpd/kinds/base.py and registers itself in KINDS below; the controller, quotas, priority
classes, users, the UI and the CLI ask the kind instead of testing its name. A kind's own files
(its spec, code shipping, outputs, SSH keys) live here too.

May import: the top-level core (jobs, store, config, errors, event_log, ...), scheduling/,
runtime/, serving/, tracking/. Not web/ or workers/.
"""
