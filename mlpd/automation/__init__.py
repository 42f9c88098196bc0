"""Work that runs itself, on the queue: dependencies between jobs, schedules and sweeps.

Every run they make is an ordinary job row (fairly scheduled, booked, tracked in MLflow); the
tables here only link to it. A job that must not enter the queue yet is in the `waiting` state
(mlpd.jobs): `automation_pass` (the worker calls it before each scheduling pass) queues it when
the jobs it needs have ended or its sweep has room, cancels it when one it needs failed, and fires
the schedules that are due.

- dependencies: `mlpd run --after ID[:ok|:any]`, `after = [...]` in a job file
- cron: the five-field cron expressions schedules use (no dependency: mlpd does not import huey,
  whose crontab is the only parser installed, and it has neither names nor cron's day rule)
- schedules: `mlpd schedule ...`, fired from their own table at most once per due time
- sweeps: `mlpd sweep ...`, trials released at most `parallel` at a time
- admission: what the worker checks before it submits a run in its owner's name
"""
