"""`mlpd admin ...`: users and tokens, through the API as an admin or on the host with --state-dir."""

from __future__ import annotations

from typing import Any

import click

from mlpd.cli.common import LazyGroup
from mlpd.output import emit_json, table, when, plural

state_dir_option = click.option(
    "--state-dir", type=click.Path(file_okay=False),
    help="Work on the daemon's state directory directly, on the host (needs read/write access to it); "
    "use it to create the first admin.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output (stable).")


def _store(state_dir: str):
    import os

    from mlpd.store import MigrationError, Store

    path = os.path.join(os.path.abspath(os.path.expanduser(state_dir)), "mlpd.db")
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    store = Store(path)
    try:
        store.migrate()
    except MigrationError as exc:  # a newer release's database, or a migration that failed (nothing changed)
        raise click.ClickException(str(exc)) from None
    return store


def _host(fn):
    """Run a host-side store operation, turning UserError into a CLI error."""
    from mlpd.users import UserError

    try:
        return fn()
    except UserError as exc:
        raise click.ClickException(str(exc)) from exc


def _parse_expiry(expires: str | None) -> float | None:
    if not expires:
        return None
    from mlpd.units import parse_duration

    try:
        return parse_duration(expires)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires") from exc


@click.group(cls=LazyGroup, lazy_subcommands={
    "dataset": "mlpd.cli.datasets:admin_dataset",
    "priority-class": "mlpd.cli.pclass:priority_class",
    "quota": "mlpd.cli.usage:admin_quota",
    "team": "mlpd.cli.usage:admin_team",
    "ws-idle-timeout": "mlpd.cli.ws:admin_idle_timeout",
})
def admin() -> None:
    """Administration (admins only): user, token, team, quota, dataset, priority-class, gpus, ws-idle-timeout, backup, restore.

    \b
    mlpd admin user add NAME            a user (and their first token)
    mlpd admin quota set --user U ...   GPU-hours per period, most GPUs at once
    mlpd admin gpus drain GPU           running work finishes, nothing new is placed
    mlpd admin backup DIR               an online snapshot (on the host)
    """


@admin.group()
def user() -> None:
    """Users: add, list, rm, password."""


@user.command("add")
@click.argument("name")
@click.option("--admin", "is_admin", is_flag=True, help="Make the user an admin.")
@click.option("--expires", help="Lifetime of the first token, e.g. 90d (default: no expiry).")
@state_dir_option
@json_option
def user_add(name: str, is_admin: bool, expires: str | None, state_dir: str | None, as_json: bool) -> None:
    """Create a user; prints their token once, alone on the last line."""
    expires_in = _parse_expiry(expires)
    role = "admin" if is_admin else "member"
    if state_dir:
        from mlpd import users

        store = _store(state_dir)
        _host(lambda: users.add_user(store, name, role, actor="host"))
        token, record = _host(lambda: users.create_token(store, name, "initial", expires_in, actor="host"))
    else:
        from mlpd.cli.common import logged_in_client

        body: dict[str, Any] = {"name": name, "admin": is_admin}
        if expires_in is not None:
            body["expires_in"] = expires_in
        result = logged_in_client().post("/users", body)
        token, record = result["token"], result["token_record"]
    if as_json:
        emit_json({"user": {"name": name, "role": role}, "token": token, "token_record": record})
        return
    click.echo(f"created {role} {name}; their token (shown once, keep it safe):")
    click.echo(token)


@user.command("list")
@state_dir_option
@json_option
def user_list(state_dir: str | None, as_json: bool) -> None:
    """List users."""
    if state_dir:
        from mlpd import users

        rows = users.list_users(_store(state_dir))
    else:
        from mlpd.cli.common import logged_in_client

        rows = logged_in_client().get("/users")["users"]
    if as_json:
        emit_json({"users": rows})
        return
    table([(r["name"], r["role"], r["active_tokens"], when(r["created_at"])) for r in rows], ["name", "role", "tokens", "created"])


@user.command("rm")
@click.argument("name")
@state_dir_option
def user_rm(name: str, state_dir: str | None) -> None:
    """Remove a user and revoke their tokens (their jobs and records stay)."""
    if state_dir:
        from mlpd import users

        store = _store(state_dir)
        _host(lambda: users.remove_user(store, name, actor="host"))
    else:
        from mlpd.cli.common import logged_in_client

        logged_in_client().delete(f"/users/{name}")
    click.echo(f"removed {name}")


def read_new_password(from_stdin: bool, prompt: str = "New password") -> str:
    """A new password: the first line of stdin with --password-stdin (scripts), else typed twice, hidden."""
    if from_stdin:
        import sys

        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt(prompt, hide_input=True, confirmation_prompt=True)


@user.command("password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input (for scripts).")
@state_dir_option
def user_password(name: str, password_stdin: bool, state_dir: str | None) -> None:
    """Set NAME's password for the web UI (ends their web sessions and clears a lockout); they can change it later."""
    from mlpd import users

    password = read_new_password(password_stdin)
    try:
        users.check_password_strength(password, name)
    except users.UserError as exc:
        raise click.ClickException(exc.message) from exc
    if state_dir:
        store = _store(state_dir)
        _host(lambda: users.set_password(store, name, password, actor="host"))
    else:
        from mlpd.cli.common import logged_in_client

        logged_in_client().post(f"/users/{name}/password", {"password": password})
    click.echo(f"password of {name} set; they log in to the web UI with it (and can change it with 'mlpd password')")


@admin.group()
def token() -> None:
    """Tokens: create, list, revoke."""


@token.command("create")
@click.argument("name")
@click.option("--label", default="", help="What the token is for.")
@click.option("--expires", help="Lifetime, e.g. 30d or 12h (default: no expiry).")
@state_dir_option
@json_option
def token_create(name: str, label: str, expires: str | None, state_dir: str | None, as_json: bool) -> None:
    """Create a token for user NAME; prints it once, alone on the last line."""
    expires_in = _parse_expiry(expires)
    if state_dir:
        from mlpd import users

        tok, record = _host(lambda: users.create_token(_store(state_dir), name, label, expires_in, actor="host"))
    else:
        from mlpd.cli.common import logged_in_client

        body: dict[str, Any] = {"user": name, "label": label}
        if expires_in is not None:
            body["expires_in"] = expires_in
        result = logged_in_client().post("/tokens", body)
        tok, record = result["token"], result["token_record"]
    if as_json:
        emit_json({"token": tok, "token_record": record})
        return
    click.echo(f"token {record['id']} for {name}" + (f", expires {when(record['expires_at'])}" if record["expires_at"] else "") + ":")
    click.echo(tok)


@token.command("list")
@click.option("--user", "name", help="Only this user's tokens.")
@state_dir_option
@json_option
def token_list(name: str | None, state_dir: str | None, as_json: bool) -> None:
    """List tokens (ids and dates, never secrets)."""
    if state_dir:
        from mlpd import users

        rows = users.list_tokens(_store(state_dir), name)
    else:
        from mlpd.cli.common import logged_in_client

        rows = logged_in_client().get("/tokens", params={"user": name} if name else {"all": 1})["tokens"]
    if as_json:
        emit_json({"tokens": rows})
        return
    table([(r["id"], r["user"], r["label"], when(r["created_at"]), when(r["expires_at"]),
            "revoked" if r["revoked_at"] else "active", when(r["last_used_at"])) for r in rows],
          ["id", "user", "label", "created", "expires", "status", "last used"])


@token.command("revoke")
@click.argument("token_id")
@state_dir_option
def token_revoke(token_id: str, state_dir: str | None) -> None:
    """Revoke a token by its id (see 'mlpd admin token list')."""
    if state_dir:
        from mlpd import users

        _host(lambda: users.revoke_token(_store(state_dir), token_id, actor="host"))
    else:
        from mlpd.cli.common import logged_in_client

        logged_in_client().delete(f"/tokens/{token_id}")
    click.echo(f"revoked {token_id}")


@admin.group()
def gpus() -> None:
    """GPUs: declare test GPUs on a host without NVIDIA GPUs; drain one (running work finishes, nothing new is placed on it) or undrain it."""


@gpus.command("declare")
@click.argument("count", type=click.IntRange(0, 64))
@click.option("--model", help="Model name shown for them (default: gpus.declared_model).")
def gpus_declare(count: int, model: str | None) -> None:
    """Declare COUNT test GPUs on a host without NVIDIA GPUs: at once, no restart, kept across restarts; 0 undoes it."""
    from mlpd.cli.common import logged_in_client

    done = logged_in_client().post("/gpus/declare", {"count": count, **({"model": model} if model else {})})
    click.echo(f"{plural(len(done['gpus']), 'GPU')} ({done['inventory']})" + ("" if count else ": back to mlpd.toml's gpus.declare or the real GPUs"))


@gpus.command("drain")
@click.argument("gpu")
@click.option("--reason", default="", help="Why, shown wherever the GPU is listed.")
def gpus_drain(gpu: str, reason: str) -> None:
    """Drain GPU (an index or UUID as 'mlpd gpus' shows them); takes effect at once and survives restarts."""
    from mlpd.cli.common import logged_in_client

    done = logged_in_client().post(f"/gpus/{gpu}/drain", {"reason": reason})
    click.echo(f"GPU {done['index']} ({done['gpu']}) drained" + (f": {reason}" if reason else "") +
               "; running work finishes, nothing new is placed on it. 'mlpd admin gpus undrain' reverses it")


@gpus.command("undrain")
@click.argument("gpu")
def gpus_undrain(gpu: str) -> None:
    """Let GPU take new work again."""
    from mlpd.cli.common import logged_in_client

    done = logged_in_client().post(f"/gpus/{gpu}/undrain")
    click.echo(f"GPU {done['index']} ({done['gpu']}) takes new work again")


def _state_dir_of(state_dir: str | None, config_file: str | None) -> str:
    if state_dir:
        return state_dir
    from mlpd.config import ConfigError, load_config

    try:
        return load_config(config_file).state_dir
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@admin.command("backup")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--state-dir", type=click.Path(file_okay=False), help="The daemon's state directory (default: from the configuration).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Configuration file naming the state directory.")
def backup_cmd(dest: str, state_dir: str | None, config_file: str | None) -> None:
    """Back up the daemon's state into DEST while it runs (on the host, as the daemon's user)."""
    from mlpd.ops.backup import BackupError, backup

    try:
        for line in backup(_state_dir_of(state_dir, config_file), dest):
            click.echo(line)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from exc


@admin.command("restore")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.option("--state-dir", type=click.Path(file_okay=False), help="The state directory to restore into (default: from the configuration).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Configuration file naming the state directory.")
@click.option("--force", is_flag=True, help="Restore over existing state (moved aside first, not deleted).")
def restore_cmd(source: str, state_dir: str | None, config_file: str | None, force: bool) -> None:
    """Restore a backup onto a stopped daemon's state directory."""
    from mlpd.ops.backup import BackupError, restore

    try:
        for line in restore(source, _state_dir_of(state_dir, config_file), force):
            click.echo(line)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from exc
