"""The batch job: `mlpd run` / `mlpd submit`. Its spec is mlpd.kinds.jobspec; its code arrives by
mlpd.kinds.codeship; its files land in /outputs (mlpd.kinds.outputs). It runs to its end or its
time limit, may be preempted for higher-class work, names its own priority class, and sees its
owner's home and team folders, as their workspaces do."""

from __future__ import annotations

import dataclasses
from typing import Any

from mlpd.kinds.base import Kind


class Job(Kind):
    name = "job"
    title = "job"
    default_time_limit = True
    preemptible = True
    priority_class_from_spec = True
    counts_slowdown = True
    listed_with_jobs = True

    def launch_request(self, store, config, job: dict[str, Any], base):
        # The owner's home, as in their workspaces: prepared in a notebook, trained in a job, with no copy.
        # Derived from the owner's name only (never from the spec), so never another member's.
        # Its teams' folders too (/shared/TEAM), by the memberships of now.
        from mlpd import datasets
        from mlpd.kinds.workspace import HOME, WorkspaceError, home_dir
        from mlpd.runtime.protocol import RuntimeFailure
        from mlpd.team_folders import TeamFolderError, mounts_for

        try:
            mounts = ((home_dir(config.state_dir, job["owner"], config["jobs.container_user"]), HOME, False),
                      *mounts_for(store, config.state_dir, job["owner"], config["jobs.container_user"]),
                      *datasets.mounts_for(store, config, job["owner"]))  # /datasets/NAME: paths checked again now
        except WorkspaceError as exc:
            raise RuntimeFailure(exc.message) from None
        except (TeamFolderError, datasets.DatasetRefused) as exc:
            raise RuntimeFailure(str(exc)) from None
        return dataclasses.replace(base, mounts=(*base.mounts, *mounts), env={**base.env, "HOME": HOME})


KIND = Job()
