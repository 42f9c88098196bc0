"""The deployment replica: one container of a deployment's scoring server (mlpd.serving has the
deployments, their revisions and the pass that starts, switches and drains replicas). It runs until
its deployment removes it, gets no credentials (the daemon copies its model out of the store for
it), and is named by its deployment and slot."""

from __future__ import annotations

from mlpd.kinds.base import Kind


class DeploymentReplica(Kind):
    name = "deployment"
    title = "deployment replica"
    tracking_credentials = False

    def launch_request(self, store, config, job, base):
        from mlpd.serving.deployments import launch_request

        return launch_request(store, config, job, base)

    def workload_names(self, store, rows):
        ids = sorted({r["id"] for r in rows})
        replicas = {r["job_id"]: (r["name"], r["slot"]) for r in store.query(
            "SELECT r.job_id, r.slot, d.name FROM deployment_replicas r JOIN deployments d ON d.id = r.deployment "
            f"WHERE r.job_id IN ({','.join('?' * len(ids))})", ids)} if ids else {}
        return {r["id"]: replicas.get(r["id"], (None, None)) for r in rows}

    def label(self, name, with_owner):
        from mlpd.workload_names import short_id

        text = f"deployment {name.name or short_id(name.job_id)}"
        if name.replica is not None:
            text += f", replica {name.replica}"
        return text + (f" ({name.owner})" if with_owner else "")

    def show_command(self, name):
        from mlpd.workload_names import short_id

        return f"mlpd deployments show {name.name}" if name.name else f"mlpd jobs show {short_id(name.job_id)}"

    def page(self, name, owner_is_viewer):
        return ("ui.deployment", {"name": name.name}) if name.name else None


KIND = DeploymentReplica()
