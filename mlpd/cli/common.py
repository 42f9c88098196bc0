"""What every `mlpd` command module shares: the lazy group, the error handling, `logged_in_client()`, `--json`.

Nothing here imports a command module or `mlpd.cli` itself, so the package has no import circle:
`mlpd.cli` (the top-level group) names its commands as "module:attr" strings and imports a module
only when one of its commands runs (or `--help` and shell completion list them).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

import click


class LazyGroup(click.Group):
    """A group whose subcommands are "module:attr" strings, imported on first use (click's LazyGroup).

    Commands added the ordinary way (`@group.command()`) live beside the lazy ones; listings are
    sorted over both, as a plain click.Group sorts its own.
    """

    def __init__(self, *args: Any, lazy_subcommands: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = dict(lazy_subcommands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_subcommands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_subcommands and cmd_name not in self.commands:
            self.add_command(self._load(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def _load(self, cmd_name: str) -> click.Command:
        module_name, attr = self.lazy_subcommands[cmd_name].split(":")
        command = getattr(import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy_subcommands[cmd_name]} is not a click command")
        return command


class MlpdGroup(LazyGroup):
    """Turns client errors into one-line messages that say what to do next."""

    def invoke(self, ctx: click.Context) -> Any:
        from mlpd.client import ClientError

        try:
            return super().invoke(ctx)
        except ClientError as exc:
            click.echo(f"Error: {exc.message}", err=True)
            ctx.exit(1)


def logged_in_client():
    """A client from the environment or the stored login (Client.from_env); NotLoggedIn when there is neither."""
    from mlpd.client import Client

    return Client.from_env()


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output (stable).")


class GpuCount(click.ParamType):
    """`--gpus`: whole GPUs (2) or a share of one GPU (0.5, time-sliced with other small work);
    the daemon checks the range (docs/gpu-sharing.md)."""

    name = "N"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a number of GPUs (2) nor a share of one GPU (0.5)", param, ctx)
        return int(number) if number.is_integer() else number


GPU_COUNT = GpuCount()
GPU_SHARE_FLAG = 0.5  # what --gpu-share asks for: as --gpus 0.5


def gpus_wanted(gpus: int | float, gpu_share: bool) -> int | float:
    """--gpus N and --gpu-share together: the GPUs to ask for (--gpu-share is --gpus 0.5)."""
    if gpu_share:
        if gpus not in (0, 1, GPU_SHARE_FLAG):
            raise click.UsageError(f"--gpu-share asks for half of one GPU; leave out --gpus {gpus} (or use --gpus 0.5)")
        return GPU_SHARE_FLAG
    return gpus
