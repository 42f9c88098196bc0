"""Admission: what is checked before work is queued, in one place for every surface.

The API, the web form and the CLI's host-side commands submit through :func:`submit_job`; the
workspace and serving routes use the same checks for their sessions and replicas. Each check raises
an MlpdError (400 for a spec that can never run here, 403 for a class or quota, 507 for a full
disk) and stores nothing; :func:`submit_job` returns the queued row and the warnings to show.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from mlpd import jobs
from mlpd.config import Config
from mlpd.errors import MlpdError
from mlpd.kinds.jobspec import JobSpec, SpecError, check_host_limits, check_shm, parse_spec
from mlpd.store import Store
from mlpd.units import host_limits


def check_disk(config: Config, incoming: int = 0, what: str = "new work") -> None:
    """Refuse new work (and an upload of `incoming` bytes) while the state directory's disk is nearly
    full (running work is not touched)."""
    from mlpd.disk import free_space_refusal

    problem = free_space_refusal(config.state_dir, config["jobs.min_free_gb"], incoming, what)
    if problem:
        raise MlpdError(507, "disk_full", problem)


def check_priority_class(store: Store, config: Config, spec: JobSpec, user: str, is_admin: bool) -> None:
    """Refuse a class that does not exist (400) or that the admins keep for others (403): mlpd.toml and the grants."""
    from mlpd.scheduling.priority_classes import submit_refusal

    refusal = submit_refusal(store, config, spec.priority_class, user, is_admin)
    if refusal:
        raise MlpdError(*refusal)


def check_fits(store: Store, config: Config, devices: Sequence[Any], spec: JobSpec, owner: str) -> None:
    """Refuse what can never run on this host: more CPUs, memory, shared memory or GPUs (of a model)
    than it has, or code the owner has not uploaded."""
    from mlpd.scheduling.resource_caps import effective_limits

    try:
        check_host_limits(spec, *host_limits())
        # /dev/shm is memory of the job: within the limit its container gets (the default one, or the host's, when it names none)
        check_shm(spec.shm, effective_limits({"memory": spec.memory}, config, host_limits())[1] or host_limits()[1],
                  default=spec.memory is None)
    except SpecError as exc:
        raise MlpdError(400, "invalid_field", str(exc)) from None
    if spec.gpus:
        usable = [d for d in devices if spec.gpu_model is None or d.name == spec.gpu_model]
        if spec.gpu_model and not usable:
            models = sorted({d.name for d in devices}) or ["none"]
            raise MlpdError(400, "invalid_field", f"gpu_model: no GPU of model {spec.gpu_model!r} on this host (models: {', '.join(models)})")
        if spec.gpus > len(usable):
            what = f" of model {spec.gpu_model!r}" if spec.gpu_model else ""
            hint = ("; run it on the CPU with --gpus 0 (gpus = 0), or, to try mlpd on a machine without NVIDIA GPUs, an admin "
                    "can declare test GPUs ('mlpd admin gpus declare N', at once)") if not devices else ""
            raise MlpdError(400, "invalid_field", f"gpus: asks for {spec.gpus} GPUs but this host has {len(usable)}{what}{hint}")
    check_code(store, config, spec, owner)


def check_code(store: Store, config: Config, spec: JobSpec, owner: str) -> None:
    """Refuse code the owner has not uploaded."""
    if spec.code and not (os.path.isdir(jobs.code_dir(config.state_dir, spec.code)) and jobs.holds_code(store, spec.code, owner)):
        raise MlpdError(400, "invalid_field", f"code: you have not uploaded a code archive {spec.code[:12]}...; upload it first "
                                              "(PUT /api/v1/code/DIGEST; 'mlpd run' does it for you)")


def check_place(config: Config, spec: JobSpec) -> JobSpec:
    """Where the job runs, fixed now (its 'on', else slurm.default_on); refuse Slurm where it is not
    enabled, and what a Slurm job cannot have yet (an environment built from requirements)."""
    import dataclasses

    on = spec.on or config["slurm.default_on"]
    if on == "slurm" and not config["slurm.enabled"]:
        raise MlpdError(400, "invalid_field", "on: this daemon does not run jobs on Slurm (slurm.enabled is false in its mlpd.toml); "
                                              "run it here with --on local (on = \"local\"), or ask an admin to set up [slurm]")
    if on == "slurm" and spec.requirements:
        raise MlpdError(400, "invalid_field", "requirements: a job on Slurm runs its image as it is (environments are built on the "
                                              "daemon's host only); install them in the image, or run it here with --on local")
    return dataclasses.replace(spec, on=on)


def submit_job(store: Store, config: Config, devices: Sequence[Any], owner: str, is_admin: bool,
               data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Validate, admit and queue a job spec for `owner`: (the job row, warnings); an MlpdError
    naming the field, the class, the quota or the disk otherwise, with nothing stored. `after` in
    the data (job ids with :ok or :any, which the owner may see) makes it wait for those jobs
    (mlpd.automation.dependencies)."""
    from mlpd import disk_use
    from mlpd.automation import dependencies
    from mlpd.scheduling import quotas

    data = dict(data)
    after = dependencies.parse_after(data.pop("after", None))  # not a field of the spec: the job's links
    dependencies.check_visible(store, after, owner, is_admin)
    try:
        spec, warnings = parse_spec(data)
    except SpecError as exc:
        raise MlpdError(400, "invalid_field", str(exc)) from None
    spec = check_place(config, spec)
    if spec.on == "slurm":
        check_code(store, config, spec, owner)  # CPUs, memory and GPUs: the cluster's nodes decide (sbatch refuses what none has)
    else:
        check_fits(store, config, devices, spec, owner)
    check_priority_class(store, config, spec, owner, is_admin)
    check_disk(config)
    disk_use.refusal(store, config, owner)  # quotas.home_gb / team_gb (DiskQuotaExceeded: 403)
    warnings = warnings + quotas.admit(store, config, owner, spec.gpu_demand,  # QuotaExceeded: 403
                                       work=[{"cpus": spec.cpus, "memory": spec.memory}])
    return dependencies.submit(store, owner, spec, warnings, after), warnings
