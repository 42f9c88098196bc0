"""`mlpd login`, `logout`, `whoami`, `password`, `version`: who you are, and where the daemon is."""

from __future__ import annotations

import os
import sys
import click

from mlpd import __version__
from mlpd.cli.common import logged_in_client, json_option


@click.command()
@click.argument("url", required=False)
@click.option("--token", help="The token (default: asked for, without echo).")
def login(url: str | None, token: str | None) -> None:
    """Store the daemon URL and your token (0600) for later commands."""
    from mlpd.client import DEFAULT_URL, Client, ClientError, normalize_url, save_credentials

    try:
        url = normalize_url(url or os.environ.get("MLPD_URL") or DEFAULT_URL)
    except ClientError as exc:
        raise click.ClickException(exc.message) from exc
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
        raise click.ClickException(f"login failed: {exc.message}") from exc
    path = save_credentials(url, token)
    click.echo(f"Logged in to {url} as {me['name']} ({me['role']}); credentials in {path}")


@click.command()
@click.option("--password-stdin", is_flag=True, help="Read the current and the new password from two lines of standard input (for scripts).")
def password(password_stdin: bool) -> None:
    """Change your password for the web UI (an admin sets the first one)."""
    from mlpd.cli.admin import read_new_password

    if password_stdin:
        old = sys.stdin.readline().rstrip("\r\n")
    else:
        old = click.prompt("Current password", hide_input=True)
    new = read_new_password(password_stdin)
    who = logged_in_client().post("/password", {"old": old, "new": new})["user"]
    click.echo(f"password of {who} changed; your other web sessions were logged out")


@click.command()
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


@click.command()
@json_option
def whoami(as_json: bool) -> None:
    """Show who you are logged in as, and where."""
    c = logged_in_client()
    me = c.get("/whoami")["user"]
    if as_json:
        from mlpd.output import emit_json

        emit_json({"user": me, "url": c.url})
    else:
        click.echo(f"{me['name']} ({me['role']}) at {c.url}")


@click.command()
@json_option
def version(as_json: bool) -> None:
    """Client and daemon versions."""
    from mlpd.client import ClientError

    daemon_version = None
    error = None
    try:
        daemon_version = logged_in_client().get("/version")["version"]
    except ClientError as exc:
        error = exc.message
    if as_json:
        from mlpd.output import emit_json

        emit_json({"client": __version__, "daemon": daemon_version})
        return
    click.echo(f"client {__version__}")
    click.echo(f"daemon {daemon_version}" if daemon_version else f"daemon unknown ({error})")
