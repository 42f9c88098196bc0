"""`mlpd daemon` and `mlpd doctor`: the commands run on the daemon's host."""

from __future__ import annotations

import sys
import time

import click

from mlpd.cli.common import json_option


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Configuration file (default: $MLPD_CONFIG, then /etc/mlpd/mlpd.toml).")
@click.option("--listen", help="HOST:PORT to listen on (overrides server.listen).")
@click.option("--state-dir", help="State directory (overrides server.state_dir).")
@click.option("--declare-gpus", type=int, help="Declare N GPUs on a machine without NVIDIA GPUs, for a quick try (overrides gpus.declare).")
@click.option("--background", is_flag=True, help="Start it detached (log in STATE_DIR/daemon.log); return once it answers. Without systemd.")
@click.option("--stop", "stop_it", is_flag=True, help="Stop the daemon running on this state directory (SIGTERM; running jobs keep running).")
@click.option("--status", "show_status", is_flag=True,
              help="Say whether a daemon runs on this state directory, its pid and the state of its processes "
                   "(RUNNING, BACKOFF, FATAL); exit 0 when it runs, 1 when one of its processes is FATAL, 3 when none runs.")
def daemon(config_file: str | None, listen: str | None, state_dir: str | None, declare_gpus: int | None, background: bool,
           stop_it: bool, show_status: bool) -> None:
    """Run the whole daemon in the foreground (what the systemd unit runs), or --background / --stop / --status it.

    The pid is the one in STATE_DIR/daemon.lock, which the daemon holds locked while it runs: a lock
    nobody holds means no daemon, so the pid can never be stale.
    """
    import logging

    from mlpd.config import ConfigError, load_config
    from mlpd.ops.daemon import Daemon, DaemonError

    try:
        config = load_config(config_file, {"server.listen": listen, "server.state_dir": state_dir, "gpus.declare": declare_gpus})
    except ConfigError as exc:
        click.echo(f"Error: configuration {exc}", err=True)
        sys.exit(2)
    if stop_it or show_status or background:
        from mlpd.ops.daemon import children_lines, children_status, running_pid, start_background, stop_running
        from mlpd.ops.supervision import FATAL

        try:
            if show_status:
                pid = running_pid(config.state_dir)
                click.echo(f"mlpd daemon running, pid {pid} (state {config.state_dir})" if pid else f"no mlpd daemon on {config.state_dir}")
                if not pid:
                    sys.exit(3)
                children = children_status(config, pid) or {}
                for line in children_lines(children, time.time()):
                    click.echo(line)
                sys.exit(1 if any(c["state"] == FATAL for c in children.values()) else 0)
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


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Configuration file (default: $MLPD_CONFIG, then /etc/mlpd/mlpd.toml).")
@click.option("--state-dir", help="State directory (overrides server.state_dir).")
@click.option("--listen", help="The daemon's HOST:PORT (overrides server.listen).")
@json_option
def doctor(config_file: str | None, state_dir: str | None, listen: str | None, as_json: bool) -> None:
    """Check this host for mlpd: engine, GPUs, images, state, disk, daemon, MLflow store, clock.

    Run it on the daemon's host (as the daemon's user). Exit code 1 when something blocks work.
    """
    from mlpd.config import ConfigError, load_config
    from mlpd.ops.doctor import FAIL, as_json as doctor_json, run_checks

    try:
        cfg = load_config(config_file, {"server.state_dir": state_dir, "server.listen": listen})
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    checks = run_checks(cfg)
    if as_json:
        from mlpd.output import emit_json

        emit_json(doctor_json(checks))
    else:
        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
        width = max((len(c.name) for c in checks), default=0)  # the longest name sets the column: names like images' vary
        for check in checks:
            click.echo(f"{marks[check.status]}  {check.name:<{width}}  {check.detail}")
            if check.fix:
                click.echo(f"{'':<{width + 8}}fix: {check.fix}")
    if any(c.status == FAIL for c in checks):
        sys.exit(1)
