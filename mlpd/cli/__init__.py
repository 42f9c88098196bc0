"""The `mlpd` command line. It talks to the daemon over HTTP through mlpd.client.

One module per command group (mlpd.cli.jobs, .automation, .admin, .pclass, .mlflow, .serving, .usage, .ws,
.identity, .daemon), shared helpers in mlpd.cli.common. `main` names its commands in COMMANDS and imports a
command's module only when that command runs, so `mlpd run` loads what `run` needs and nothing
else; heavy modules (flask, docker, mlflow) are imported inside the commands that use them.
"""

from __future__ import annotations

import click

from mlpd import __version__
from mlpd.cli.common import MlpdGroup

# Every top-level command: name -> "module:attr". tests/unit/test_cli_package.py checks that
# `mlpd --help` lists each of them and that each resolves to a command of that name.
COMMANDS = {
    "admin": "mlpd.cli.admin:admin",
    "cancel": "mlpd.cli.jobs:cancel",
    "daemon": "mlpd.cli.daemon:daemon",
    "datasets": "mlpd.cli.datasets:datasets",
    "deployments": "mlpd.cli.serving:deployments",
    "doctor": "mlpd.cli.daemon:doctor",
    "env": "mlpd.cli.mlflow:env",
    "experiments": "mlpd.cli.mlflow:experiments",
    "fair-share": "mlpd.cli.usage:fair_share",
    "gpus": "mlpd.cli.jobs:gpus",
    "images": "mlpd.cli.jobs:images",
    "jobs": "mlpd.cli.jobs:jobs",
    "keys": "mlpd.cli.ws:keys",
    "login": "mlpd.cli.identity:login",
    "logout": "mlpd.cli.identity:logout",
    "logs": "mlpd.cli.jobs:logs",
    "models": "mlpd.cli.mlflow:models",
    "password": "mlpd.cli.identity:password",
    "predict": "mlpd.cli.predict:predict",
    "quota": "mlpd.cli.usage:quota",
    "run": "mlpd.cli.jobs:run",
    "runs": "mlpd.cli.mlflow:runs",
    "schedule": "mlpd.cli.automation:schedule",
    "serve": "mlpd.cli.serving:serve",
    "submit": "mlpd.cli.jobs:submit",
    "sweep": "mlpd.cli.automation:sweep",
    "usage": "mlpd.cli.usage:usage",
    "version": "mlpd.cli.identity:version",
    "wait": "mlpd.cli.jobs:wait",
    "whoami": "mlpd.cli.identity:whoami",
    "ws": "mlpd.cli.ws:ws",
}


@click.group(cls=MlpdGroup, lazy_subcommands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--client-version", prog_name="mlpd")
@click.pass_context
def main(ctx: click.Context) -> None:
    """mlpd: the ML platform daemon for one GPU box.

    \b
    Start here:   mlpd login http://HOST:8470      (token from your admin)
    Train:        mlpd run --gpus 1 -- python train.py
    Watch:        mlpd jobs, mlpd logs -f ID
    """
    if ctx.invoked_subcommand != "daemon":
        from mlpd import termsafe

        termsafe.install()  # a job's text is shown, never obeyed by the terminal (mlpd.termsafe)
