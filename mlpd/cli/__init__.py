"""The `mlpd` command line. It talks to the daemon over HTTP through mlpd.client.

Heavy modules (requests, flask, docker, mlflow) are imported inside commands so
that `mlpd --help` answers at once.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from mlpd import __version__


class MlpdGroup(click.Group):
    """Turns client errors into one-line messages that say what to do next."""

    def invoke(self, ctx: click.Context) -> Any:
        from mlpd.client import ClientError

        try:
            return super().invoke(ctx)
        except ClientError as exc:
            click.echo(f"Error: {exc.message}", err=True)
            ctx.exit(1)


def _client():
    from mlpd.client import Client

    return Client.from_env()


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output (stable).")


@click.group(cls=MlpdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--client-version", prog_name="mlpd")
def main() -> None:
    """mlpd: the ML platform daemon for one GPU box.

    \b
    Start here:   mlpd login http://HOST:8470      (token from your admin)
    Train:        mlpd run --gpus 1 -- python train.py
    Watch:        mlpd jobs, mlpd logs -f ID
    """


# ---------------------------------------------------------------- daemon


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Configuration file (default: $MLPD_CONFIG, then /etc/mlpd/mlpd.toml).")
@click.option("--listen", help="HOST:PORT to listen on (overrides server.listen).")
@click.option("--state-dir", help="State directory (overrides server.state_dir).")
@click.option("--declare-gpus", type=int, help="Declare N GPUs on a machine without NVIDIA GPUs, for a quick try (overrides gpus.declare).")
@click.option("--background", is_flag=True, help="Start it detached (log in STATE_DIR/daemon.log); return once it answers. Without systemd.")
@click.option("--stop", "stop_it", is_flag=True, help="Stop the daemon running on this state directory (SIGTERM; running jobs keep running).")
@click.option("--status", "show_status", is_flag=True, help="Say whether a daemon runs on this state directory, and its pid.")
def daemon(config_file: str | None, listen: str | None, state_dir: str | None, declare_gpus: int | None, background: bool,
           stop_it: bool, show_status: bool) -> None:
    """Run the whole daemon in the foreground (what the systemd unit runs), or --background / --stop / --status it.

    The pid is the one in STATE_DIR/daemon.lock, which the daemon holds locked while it runs: a lock
    nobody holds means no daemon, so the pid can never be stale.
    """
    import logging

    from mlpd.config import ConfigError, load_config
    from mlpd.daemon import Daemon, DaemonError

    try:
        config = load_config(config_file, {"server.listen": listen, "server.state_dir": state_dir, "gpus.declare": declare_gpus})
    except ConfigError as exc:
        click.echo(f"Error: configuration {exc}", err=True)
        sys.exit(2)
    if stop_it or show_status or background:
        from mlpd.daemon import running_pid, start_background, stop_running

        try:
            if show_status:
                pid = running_pid(config.state_dir)
                click.echo(f"mlpd daemon running, pid {pid} (state {config.state_dir})" if pid else f"no mlpd daemon on {config.state_dir}")
                sys.exit(0 if pid else 3)
            if stop_it:
                click.echo(stop_running(config.state_dir))
                return
            argv = [a for a in sys.argv[1:] if a != "--background"]
            click.echo(start_background(config, [sys.argv[0], *argv]))
            return
        except DaemonError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
    logging.basicConfig(level=config["server.log_level"].upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    d = Daemon(config)
    try:
        d.prepare()
    except DaemonError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    sys.exit(d.run())


# ---------------------------------------------------------------- identity


@main.command()
@click.argument("url", required=False)
@click.option("--token", help="The token (default: asked for, without echo).")
def login(url: str | None, token: str | None) -> None:
    """Store the daemon URL and your token (0600) for later commands."""
    from mlpd.client import DEFAULT_URL, Client, ClientError, normalize_url, save_credentials

    try:
        url = normalize_url(url or os.environ.get("MLPD_URL") or DEFAULT_URL)
    except ClientError as exc:
        raise click.ClickException(exc.message)
    if not token:
        if not sys.stdin.isatty():
            token = sys.stdin.readline().strip()
        else:
            token = click.prompt("Token", hide_input=True)
    if not token:
        raise click.ClickException("no token given: pass --token TOKEN, or the token on standard input "
                                   "(an admin creates one with 'mlpd admin token create NAME')")
    try:
        me = Client(url, token, timeout=10).get("/whoami")["user"]
    except ClientError as exc:
        raise click.ClickException(f"login failed: {exc.message}")
    path = save_credentials(url, token)
    click.echo(f"Logged in to {url} as {me['name']} ({me['role']}); credentials in {path}")


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Configuration file (default: $MLPD_CONFIG, then /etc/mlpd/mlpd.toml).")
@click.option("--state-dir", help="State directory (overrides server.state_dir).")
@click.option("--listen", help="The daemon's HOST:PORT (overrides server.listen).")
@json_option
def doctor(config_file: str | None, state_dir: str | None, listen: str | None, as_json: bool) -> None:
    """Check this host for mlpd: engine, GPUs, images, state, disk, daemon, MLflow store, clock.

    Run it on the daemon's host (as the daemon's user). Exit code 1 when something blocks work.
    """
    from mlpd.config import ConfigError, load_config
    from mlpd.doctor import FAIL, as_json as doctor_json, run_checks

    try:
        cfg = load_config(config_file, {"server.state_dir": state_dir, "server.listen": listen})
    except ConfigError as exc:
        raise click.ClickException(str(exc))
    checks = run_checks(cfg)
    if as_json:
        from mlpd.output import emit_json

        emit_json(doctor_json(checks))
    else:
        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
        for check in checks:
            click.echo(f"{marks[check.status]}  {check.name:<24} {check.detail}")
            if check.fix:
                click.echo(f"{'':<30}fix: {check.fix}")
    if any(c.status == FAIL for c in checks):
        sys.exit(1)


@main.command()
@click.option("--password-stdin", is_flag=True, help="Read the current and the new password from two lines of standard input (for scripts).")
def password(password_stdin: bool) -> None:
    """Change your password for the web UI (an admin sets the first one)."""
    from mlpd.cli.admin import read_new_password

    if password_stdin:
        old = sys.stdin.readline().rstrip("\r\n")
    else:
        old = click.prompt("Current password", hide_input=True)
    new = read_new_password(password_stdin)
    who = _client().post("/password", {"old": old, "new": new})["user"]
    click.echo(f"password of {who} changed; your other web sessions were logged out")


@main.command()
def logout() -> None:
    """Forget the stored URL and token (the token itself stays valid: 'mlpd admin token revoke' ends it)."""
    from mlpd.client import credentials_path

    path = credentials_path()
    try:
        os.remove(path)
    except FileNotFoundError:
        click.echo("not logged in (nothing stored)")
        return
    click.echo(f"logged out: removed {path}")
    if os.environ.get("MLPD_TOKEN"):
        click.echo("note: MLPD_URL/MLPD_TOKEN in your environment still log you in", err=True)


@main.command()
@json_option
def whoami(as_json: bool) -> None:
    """Show who you are logged in as, and where."""
    c = _client()
    me = c.get("/whoami")["user"]
    if as_json:
        from mlpd.output import emit_json

        emit_json({"user": me, "url": c.url})
    else:
        click.echo(f"{me['name']} ({me['role']}) at {c.url}")


@main.command()
@json_option
def version(as_json: bool) -> None:
    """Client and daemon versions."""
    from mlpd.client import ClientError

    daemon_version = None
    error = None
    try:
        daemon_version = _client().get("/version")["version"]
    except ClientError as exc:
        error = exc.message
    if as_json:
        from mlpd.output import emit_json

        emit_json({"client": __version__, "daemon": daemon_version})
        return
    click.echo(f"client {__version__}")
    click.echo(f"daemon {daemon_version}" if daemon_version else f"daemon unknown ({error})")


# ---------------------------------------------------------------- admin

from mlpd.cli.admin import admin  # noqa: E402

main.add_command(admin)

from mlpd.cli.jobs import register as _register_jobs  # noqa: E402
from mlpd.cli.usage import register as _register_usage  # noqa: E402

from mlpd.cli.mlflow import register as _register_mlflow  # noqa: E402
from mlpd.cli.ws import register as _register_ws  # noqa: E402

_register_jobs(main)
_register_usage(main, admin)
_register_mlflow(main)
_register_ws(main)

from mlpd.cli.serving import register as _register_serving  # noqa: E402

_register_serving(main)
