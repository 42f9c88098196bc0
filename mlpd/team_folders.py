"""Team folders: each team's shared, writable folder, at /shared/TEAM in its members' jobs, notebook
jobs and workspaces.

A folder is `STATE_DIR/teams/TEAM` (made on first use, owned by the container user, 0700: every
member's container runs as that uid, so the mount, not the uid, is what keeps a folder to its team).
Which folders a container gets is read from the team memberships when it starts, never from its
spec: a member of two teams gets both, and anyone else neither. The path is derived from the team's
name only (names are checked by mlpd.users.check_name: no '/', no '..'). Removing a team or a member
leaves the files; running work keeps its mounts until it ends.
"""

from __future__ import annotations

import os

from mlpd.store import Store

MOUNT_ROOT = "/shared"  # /shared/TEAM in the container


class TeamFolderError(Exception):
    """A team's folder is not a plain directory under the state directory (something replaced it)."""


def folder(state_dir: str, team: str, uid_gid: str) -> str:
    """The team's folder on the host (made on first use, owned by the container user, 0700)."""
    from mlpd.users import check_name

    check_name(team)
    path = owned_directory(os.path.join(state_dir, "teams"), team, uid_gid)
    if path is None:
        raise TeamFolderError(f"the folder of team {team!r} is not a plain directory under {os.path.join(state_dir, 'teams')}")
    return path


def owned_directory(root: str, name: str, uid_gid: str) -> str | None:
    """root/name, made on first use (0700, owned by the container user uid:gid); None when something
    replaced it with what is not a plain directory under root (a link). Team folders and homes."""
    os.makedirs(root, mode=0o711, exist_ok=True)
    path = os.path.join(root, name)
    if os.path.realpath(path) != os.path.join(os.path.realpath(root), name):
        return None
    if not os.path.isdir(path):
        os.mkdir(path, 0o700)
        uid, gid = (int(x) for x in uid_gid.split(":"))
        try:
            os.chown(path, uid, gid)
        except PermissionError:
            os.chmod(path, 0o777)  # a daemon that is not root cannot give it away; the state dir (0700) still fences it
    return path


def mounts_for(store: Store, state_dir: str, owner: str, uid_gid: str) -> tuple[tuple[str, str, bool], ...]:
    """(host folder, /shared/TEAM, read-only False) for each team the owner belongs to now."""
    rows = store.query("SELECT team FROM team_members WHERE user = ? ORDER BY team", [owner])
    return tuple((folder(state_dir, r["team"], uid_gid), f"{MOUNT_ROOT}/{r['team']}", False) for r in rows)
