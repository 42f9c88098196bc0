#!/usr/bin/env bash
# Install mlpd on this machine and run it as a service. Idempotent: run it again to upgrade; a run
# that finds everything right changes nothing. Its output is one line per step; the noise of apt, pip
# and image builds goes to $MLPD_INSTALL_LOG (shown when a step fails).
#
#   sudo ./install.sh                      everything: Docker engine, system user, venv, config, state,
#                                          images, the service, the first admin; ends with 'mlpd doctor'
#   sudo ./install.sh --uninstall          stop and remove the service, the venv and the mlpd command;
#                                          keep the data (state, config, user, images, containers)
#   sudo ./install.sh --uninstall --purge  ... and remove the data too: state directory, config, the
#                                          system user, and this instance's containers
#   ./install.sh --print-unit              print the systemd unit this install would write, and exit
#   sudo ./install.sh --engine-only        only the Docker engine and debootstrap (used by tests/run.sh)
#   sudo ./install.sh --timings            as the first form, each step's line led by the seconds since the start
#                                          (the install log always has them, as [+SECONDS] lines)
#
# Settings (environment): MLPD_PREFIX (/opt/mlpd), MLPD_STATE_DIR (/var/lib/mlpd), MLPD_CONFIG_DIR
# (/etc/mlpd), MLPD_LISTEN (127.0.0.1:8470), MLPD_ADMIN (admin), MLPD_USER (mlpd, the daemon's system
# user), MLPD_JOBS_USER (mlpd-jobs, the no-login account containers run as), MLPD_PYTHON (/usr/bin/python3, 3.11 or newer), MLPD_INSTALL_LOG (/var/log/mlpd-install.log).
# MLPD_STATE_DIR and MLPD_LISTEN seed a new config file; an existing one is kept and its values win.
set -Eeuo pipefail
umask 022  # the venv and the config must be readable by the daemon's user, whatever root's umask is

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prefix="${MLPD_PREFIX:-/opt/mlpd}"
state_dir="${MLPD_STATE_DIR:-/var/lib/mlpd}"
config_dir="${MLPD_CONFIG_DIR:-/etc/mlpd}"
listen="${MLPD_LISTEN:-127.0.0.1:8470}"
admin="${MLPD_ADMIN:-admin}"
user="${MLPD_USER:-mlpd}"
jobs_user="${MLPD_JOBS_USER:-mlpd-jobs}"
if [ -n "${MLPD_PYTHON:-}" ]; then python="$MLPD_PYTHON"; elif [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; else python=python3; fi
install_log="${MLPD_INSTALL_LOG:-/var/log/mlpd-install.log}"
unit_file=/etc/systemd/system/mlpd.service
venv="$prefix/venv"
mlpd_bin="$venv/bin/mlpd"
config="$config_dir/mlpd.toml"
unit_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

timings=0
# Each step's line; in the install log with the seconds since the start (phase times of a fresh install).
say() {
  if [ "$timings" = 1 ]; then printf '==> [%5ss] %s\n' "$SECONDS" "$*"; else printf '==> %s\n' "$*"; fi
  [ ! -w "$install_log" ] || printf '[+%ss] ==> %s\n' "$SECONDS" "$*" >>"$install_log"
}
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
log_start=0
failed() {
  printf 'install.sh: a step failed (line %s); the last lines of %s:\n' "$1" "$install_log" >&2
  tail -n "+$((log_start + 1))" "$install_log" 2>/dev/null | tail -n 40 | sed 's/^/    /' >&2
  exit 1
}
# Run a command with its output in the install log (kept off the screen; shown if it fails).
quietly() { printf '\n$ %s\n' "$*" >>"$install_log"; "$@" >>"$install_log" 2>&1; }

have_systemd() { [ -d /run/systemd/system ] && [ "$(ps -p 1 -o comm= 2>/dev/null)" = systemd ]; }

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "need root to install ${missing[*]} (run with sudo)"
  command -v apt-get >/dev/null || die "no apt-get: install ${missing[*]} yourself"
  say "installing ${missing[*]} (apt)"
  DEBIAN_FRONTEND=noninteractive quietly apt-get update -qq
  DEBIAN_FRONTEND=noninteractive quietly apt-get install -y -qq "${missing[@]}"
}

ensure_engine() {
  if ! command -v dockerd >/dev/null 2>&1; then apt_install docker.io; fi
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  if ! docker info >/dev/null 2>&1; then
    if have_systemd; then
      say "starting Docker (systemd)"
      quietly systemctl enable --now docker
    else
      say "starting dockerd in the background (no systemd here); its log: /var/log/dockerd.log"
      nohup dockerd >/var/log/dockerd.log 2>&1 &
    fi
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || die "the Docker engine did not answer; see /var/log/dockerd.log"
  fi
  say "Docker engine: running, version $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?')"
}

# The systemd unit. Its comments say why each setting is there; it is the one place the service is defined
# (the no-systemd start below uses the same user, groups, umask, environment and NoNewPrivileges).
render_unit() {
  cat <<UNIT
# Written by mlpd's install.sh; running it again rewrites this file. Local changes: 'systemctl edit mlpd'.
[Unit]
Description=mlpd ML platform daemon
After=network-online.target docker.service
Wants=network-online.target docker.service

[Service]
Type=notify
NotifyAccess=main
User=$user
Group=$user
# The engine's socket (/var/run/docker.sock) is root:docker 0660. Note: whoever can use the engine can
# become root on this host; the user and the sandbox below guard against mistakes in mlpd itself.
SupplementaryGroups=docker
ExecStart=$mlpd_bin daemon --config $config
WorkingDirectory=$state_dir
Environment=HOME=$state_dir LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
# 022, not 077: code directories are unpacked here and mounted into containers that run as another uid;
# the state directory itself is 0700, which keeps other users of the host out.
UMask=0022
Restart=on-failure
RestartSec=3
TimeoutStartSec=180

# Stopping: SIGTERM to the daemon alone, which stops its web server and worker itself (within ~10 s);
# whatever is left after TimeoutStopSec gets SIGKILL. Job, workspace and serving containers are not
# in this unit: they are children of containerd in Docker's own cgroups, so a stop, restart or upgrade
# leaves them running, and the daemon picks them up again at its next start (by their labels).
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec=30

StandardOutput=journal
StandardError=journal
SyslogIdentifier=mlpd

# Sandbox. The daemon writes only its state directory; it reads its venv and config, talks to the engine
# over its socket, binds a loopback port (and one on mlpd's Docker network for containers), and reads GPUs
# through NVML (/dev/nvidia*, which is why PrivateDevices is not set).
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=$state_dir
ProtectHome=yes
PrivateTmp=yes
# The one capability it keeps. Containers run as another uid (jobs.container_user) and leave files in
# the state directory that the daemon must read (outputs downloads, backups) and remove (retention)
# even when a job made them private. ProtectSystem=strict still keeps its writes to the state directory.
# Not CAP_CHOWN: a workspace home it cannot give to the container's uid is made 0777 instead, inside
# the 0700 state directory.
CapabilityBoundingSet=CAP_DAC_OVERRIDE
AmbientCapabilities=CAP_DAC_OVERRIDE
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
SystemCallFilter=@system-service

[Install]
WantedBy=multi-user.target
UNIT
}

# Run a command as the daemon's user, as its unit does: same user and groups, the one capability,
# NoNewPrivileges, umask 022, the unit's environment and nothing of ours.
as_daemon() {
  (cd / && umask 022 && exec setpriv --reuid="$user" --regid="$user" --init-groups --no-new-privs \
     --inh-caps=-all,+dac_override --ambient-caps=-all,+dac_override --bounding-set=-all,+dac_override \
     env -i PATH="$unit_path" HOME="$state_dir" LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 USER="$user" LOGNAME="$user" "$@")
}

source_digest() {
  (cd "$repo" && find pyproject.toml mlpd web workers images -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
     | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

daemon_pid() {  # the running daemon's pid (from its lock, never stale), or nothing
  [ -x "$mlpd_bin" ] && [ -f "$config" ] || return 0
  "$mlpd_bin" daemon --status --config "$config" 2>/dev/null | sed -n 's/.*running, pid \([0-9]*\).*/\1/p' || true
}

stop_daemon() {
  if have_systemd && systemctl is-active --quiet mlpd 2>/dev/null; then
    quietly systemctl stop mlpd
  elif [ -n "$(daemon_pid)" ]; then
    quietly "$mlpd_bin" daemon --stop --config "$config"
  fi
}

uninstall() {
  local purge="$1"
  if have_systemd && [ -f "$unit_file" ]; then
    quietly systemctl disable --now mlpd
    rm -f "$unit_file"
    quietly systemctl daemon-reload
    say "stopped and removed mlpd.service"
  elif [ -n "$(daemon_pid)" ]; then
    quietly "$mlpd_bin" daemon --stop --config "$config"
    say "stopped the mlpd daemon"
  fi
  [ "$(readlink /usr/local/bin/mlpd 2>/dev/null)" = "$mlpd_bin" ] && rm -f /usr/local/bin/mlpd
  if [ -d "$venv" ]; then rm -rf "$venv"; say "removed $venv"; fi
  rm -f "$prefix/mlpd.service"
  rmdir "$prefix" 2>/dev/null || true
  local instance containers
  instance="$(cat "$state_dir/instance_id" 2>/dev/null || true)"
  containers=""
  if [ -n "$instance" ] && docker info >/dev/null 2>&1; then
    containers="$(docker ps -aq --filter "label=mlpd.instance=$instance")"
  fi
  if [ "$purge" = 1 ]; then
    if [ -n "$containers" ]; then
      # shellcheck disable=SC2086
      quietly docker rm -f $containers
      say "removed $(echo "$containers" | wc -l) mlpd containers"
    fi
    rm -rf "$state_dir" "$config_dir"
    say "removed $state_dir and $config_dir"
    if id -u "$user" >/dev/null 2>&1; then quietly userdel "$user"; say "removed the system user $user"; fi
    if id -u "$jobs_user" >/dev/null 2>&1; then quietly userdel "$jobs_user"; say "removed the account $jobs_user"; fi
    say "kept: the Docker engine and mlpd's images ('docker image ls mlpd/*')"
  else
    [ -z "$containers" ] || say "$(echo "$containers" | wc -l) mlpd containers keep running; a new install picks them up (--purge removes them)"
    say "kept the data: $state_dir, $config_dir and the user $user (--uninstall --purge removes them), and the images"
  fi
}

action=install purge=0
for arg in "$@"; do
  case "$arg" in
    --engine-only) action=engine ;;
    --uninstall) action=uninstall ;;
    --purge) purge=1 ;;
    --print-unit) action=print-unit ;;
    --timings) timings=1 ;;
    -h|--help) sed -n '2,/^set /p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $arg (see ./install.sh --help)" ;;
  esac
done
[ "$purge" = 0 ] || [ "$action" = uninstall ] || die "--purge goes with --uninstall"
if [ "$action" = print-unit ]; then render_unit; exit 0; fi

[ "$(id -u)" -eq 0 ] || [ "$action" = engine ] || die "run it as root (sudo ./install.sh)"
mkdir -p "$(dirname "$install_log")"
printf '\n==== install.sh %s, %s\n' "$*" "$(date -Is)" >>"$install_log"
log_start="$(wc -l <"$install_log")"
trap 'failed $LINENO' ERR

if [ "$action" = engine ]; then ensure_engine; exit 0; fi
if [ "$action" = uninstall ]; then uninstall "$purge"; exit 0; fi

ensure_engine
# The daemon's front (server.front): nginx reads each request whole, so slow clients hold no web thread.
command -v nginx >/dev/null 2>&1 || apt_install nginx-light
# The serving proxy (serving.listen): HAProxy answers /serve/NAME/... with no Python on the request path.
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || apt_install haproxy

# -- the daemon's system user, in the docker group
command -v setpriv >/dev/null || apt_install setpriv
getent group docker >/dev/null || quietly groupadd --system docker
if ! id -u "$user" >/dev/null 2>&1; then
  quietly useradd --system --user-group --home-dir "$state_dir" --no-create-home --shell /usr/sbin/nologin --comment "mlpd daemon" "$user"
  say "created the system user $user"
fi
if ! id -nG "$user" | tr ' ' '\n' | grep -qx docker; then
  quietly usermod -aG docker "$user"
  say "added $user to the docker group"
fi
[ "$(stat -c %G /var/run/docker.sock 2>/dev/null)" = docker ] \
  || say "warning: /var/run/docker.sock is not group docker: $user cannot reach the engine (restart dockerd)"

# -- the venv, reinstalled only when this checkout differs from what it holds
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$python is older than 3.11; set MLPD_PYTHON"
case "$("$python" -c 'import sys; print(sys.base_prefix)')" in
  /root/*|/home/*|/run/user/*) die "$python lives under a home directory, which the service cannot see (ProtectHome); set MLPD_PYTHON=/usr/bin/python3" ;;
esac
"$python" -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
digest="$(source_digest)"
if [ -x "$venv/bin/python" ] && ! as_daemon "$venv/bin/python" -c '' 2>/dev/null; then
  say "$venv cannot be run by $user (made from another Python?): recreating it"
  rm -rf "$venv"
fi
package_changed=0
if [ -x "$mlpd_bin" ] && [ "$(cat "$venv/.mlpd-source" 2>/dev/null)" = "$digest" ]; then
  say "mlpd $("$mlpd_bin" --client-version | awk '{print $NF}') in $venv: current"
else
  say "installing mlpd into $venv (a few minutes the first time)"
  mkdir -p "$prefix"
  [ -x "$venv/bin/python" ] || quietly "$python" -m venv "$venv"
  quietly "$venv/bin/pip" install --upgrade "$repo"
  echo "$digest" >"$venv/.mlpd-source"
  package_changed=1
  say "installed mlpd $("$mlpd_bin" --client-version | awk '{print $NF}')"
fi
[ "$(readlink /usr/local/bin/mlpd 2>/dev/null)" = "$mlpd_bin" ] || ln -sfn "$mlpd_bin" /usr/local/bin/mlpd 2>/dev/null || true

# -- config (root:USER 0640; kept if present) and the values the daemon will use
config_changed=0
mkdir -p "$config_dir"
if [ ! -f "$config" ]; then
  # server.listen is the first `listen =` line ([server]); serving.listen (the proxy's) keeps "auto".
  sed -e "s|^state_dir = .*|state_dir = \"$state_dir\"|" -e "0,/^listen = /s|^listen = .*|listen = \"$listen\"|" "$repo/mlpd.toml" >"$config.tmp"
  mv "$config.tmp" "$config"
  config_changed=1
  say "wrote $config"
fi
if [ "$(stat -c '%U:%G %a' "$config")" != "root:$user 640" ]; then chown "root:$user" "$config"; chmod 0640 "$config"; fi
read -r listen state_dir < <("$venv/bin/python" -c 'import sys; from mlpd.config import load_config; c = load_config(sys.argv[1]); print(c["server.listen"], c.state_dir)' "$config")
url="http://$listen"

# -- the account every container of a member runs as (jobs.container_user): a system account with no login
#    shell and no home, so that nobody who logs in here shares the uid of the jobs' processes (and could read
#    their tokens in /proc/PID/environ). It gets the configured uid:gid when no account has that uid (the
#    default, 65200:65200, is in a range no account uses); a config whose uid is a login account's (0.x's
#    1000:1000, say) is moved to this account, with the workspace homes that uid owned.
is_login_shell() { case "$(basename "${1:-/bin/sh}")" in nologin|false) return 1 ;; *) return 0 ;; esac; }
read -r job_uid job_gid < <("$venv/bin/python" -c 'import sys; from mlpd.config import load_config; print(*load_config(sys.argv[1])["jobs.container_user"].split(":"))' "$config")
if ! id -u "$jobs_user" >/dev/null 2>&1; then
  if getent passwd "$job_uid" >/dev/null; then
    getent group "$jobs_user" >/dev/null || quietly groupadd --system "$jobs_user"
    quietly useradd --system --gid "$jobs_user" --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --comment "mlpd jobs" "$jobs_user"
  else
    getent group "$job_gid" >/dev/null || quietly groupadd --gid "$job_gid" "$jobs_user"
    quietly useradd --uid "$job_uid" --gid "$job_gid" --no-create-home --no-log-init --home-dir /nonexistent --shell /usr/sbin/nologin --comment "mlpd jobs" "$jobs_user"
  fi
  say "created the no-login account $jobs_user (uid $(id -u "$jobs_user")) for containers"
fi
if [ "$(id -u "$jobs_user")" != "$job_uid" ] && is_login_shell "$(getent passwd "$job_uid" | cut -d: -f7)" && getent passwd "$job_uid" >/dev/null; then
  old_uid="$job_uid"
  job_uid="$(id -u "$jobs_user")" job_gid="$(id -g "$jobs_user")"
  if grep -q '^container_user *=' "$config"; then
    sed -i "s|^container_user *=.*|container_user = \"$job_uid:$job_gid\"|" "$config"
  elif grep -q '^\[jobs\]' "$config"; then
    sed -i "s|^\[jobs\]|[jobs]\ncontainer_user = \"$job_uid:$job_gid\"|" "$config"
  else
    printf '\n[jobs]\ncontainer_user = "%s"\n' "$job_uid:$job_gid" >>"$config"
  fi
  [ ! -d "$state_dir/homes" ] || find "$state_dir/homes" -xdev -uid "$old_uid" -exec chown -h "$job_uid:$job_gid" {} +
  config_changed=1
  say "jobs.container_user was uid $old_uid, a login account's: set to $jobs_user ($job_uid:$job_gid) in $config"
fi

# -- restart only when something changed, or the daemon does not run (as its user)
pid="$(daemon_pid)"
running_as="$([ -n "$pid" ] && ps -o user= -p "$pid" 2>/dev/null | tr -d ' ' || true)"
# $prefix/mlpd.service is the unit the daemon last started under (also where systemd does not run)
unit_changed=0
if ! cmp -s <(render_unit) "$prefix/mlpd.service" || { have_systemd && ! cmp -s <(render_unit) "$unit_file"; }; then unit_changed=1; fi
restart=0
if [ "$package_changed$config_changed$unit_changed" != 000 ] || [ -z "$pid" ] || [ "$running_as" != "$user" ]; then restart=1; fi
if [ "$restart" = 1 ] && [ -n "$pid" ]; then
  stop_daemon  # containers keep running; the daemon picks them up when it starts again
  say "stopped the running daemon (pid $pid, as ${running_as:-?}); its containers keep running"
fi

# -- the state directory: the user's, 0700; files a daemon left while it ran as root become the user's
#    (files owned by containers' uids stay theirs: those are homes and job outputs)
if [ "$(stat -c '%U:%G %a' "$state_dir" 2>/dev/null)" != "$user:$user 700" ]; then
  install -d -o "$user" -g "$user" -m 0700 "$state_dir"
  say "state directory $state_dir: owned by $user, mode 0700"
fi
if [ -n "$(find "$state_dir" -xdev -uid 0 -print -quit)" ]; then
  [ -z "$(daemon_pid)" ] || { stop_daemon; restart=1; }
  count="$(find "$state_dir" -xdev -uid 0 | wc -l)"
  find "$state_dir" -xdev -uid 0 -exec chown -h "$user:$user" {} +
  say "gave $count files that root left in $state_dir to $user"
fi

# -- images (built by root: the base image needs debootstrap)
tags="$("$venv/bin/python" -c 'import sys; from mlpd.config import load_config; from mlpd.runtime.image_catalog import definitions
c = load_config(sys.argv[1]); print(c["images.base"], *(d.tag for d in definitions(c)))' "$config")"
missing=""
for tag in $tags; do docker image inspect "$tag" >/dev/null 2>&1 || missing="$missing $tag"; done
[ -z "$missing" ] || say "building images:$missing (a few minutes the first time)"
images_out="$(mktemp)"
"$mlpd_bin" images build --local --config "$config" >"$images_out" 2>&1 || { cat "$images_out" >>"$install_log"; rm -f "$images_out"; failed $LINENO; }
cat "$images_out" >>"$install_log"
if grep -qv ': present$' "$images_out"; then say "images: built what was missing or stale ($tags)"; else say "images: present and current ($tags)"; fi
rm -f "$images_out"

# -- the service
if have_systemd; then
  if [ "$unit_changed" = 1 ]; then
    render_unit >"$unit_file.tmp" && mv "$unit_file.tmp" "$unit_file"
    quietly systemctl daemon-reload
    say "wrote $unit_file"
  fi
  systemctl is-enabled --quiet mlpd 2>/dev/null || { quietly systemctl enable mlpd; say "enabled mlpd.service"; }
  if [ "$restart" = 1 ]; then quietly systemctl restart mlpd; say "started mlpd.service (as $user)"; fi
  where="journalctl -u mlpd"
else
  # No systemd as PID 1 (a container, CI): the same command as the unit's, as its user, detached. Its pid
  # is in the state directory's lock: 'mlpd daemon --status|--stop --config $config'.
  if [ "$restart" = 1 ]; then
    quietly as_daemon "$mlpd_bin" daemon --background --config "$config"
    say "no systemd here: started 'mlpd daemon --background' as $user (pid $(daemon_pid)); log in $state_dir/daemon.log"
  fi
  where="$state_dir/daemon.log"
fi
[ "$unit_changed" = 0 ] || render_unit >"$prefix/mlpd.service"
rm -f /run/mlpd.pid  # an older install.sh kept a pid file there; the daemon's lock replaces it
[ "$restart" = 1 ] || say "the daemon runs as $user (pid $pid) and is current: not restarted"

for _ in $(seq 1 90); do curl -fsS "$url/healthz" >/dev/null 2>&1 && break; sleep 1; done
curl -fsS "$url/healthz" >/dev/null 2>&1 || die "the daemon did not answer on $url/healthz; see $where"
say "mlpd answers on $url"

# -- the first admin (as the daemon's user: the database is its)
admins="$(as_daemon "$mlpd_bin" admin user list --state-dir "$state_dir" --json | "$venv/bin/python" -c 'import json,sys; print(sum(u["role"]=="admin" for u in json.load(sys.stdin)["users"]))')"
if [ "$admins" = 0 ]; then
  token="$(as_daemon "$mlpd_bin" admin user add "$admin" --admin --state-dir "$state_dir" | tail -n 1)"
  say "created the first admin '$admin'. Log in with:"
  echo "    mlpd login $url --token $token"
else
  say "admins exist already; create users with: sudo -u $user mlpd admin user add NAME --state-dir $state_dir"
fi

# -- last: mlpd doctor, as the daemon's user (what is not ok, with its fix)
set +e
report="$(as_daemon "$mlpd_bin" doctor --config "$config" --json 2>>"$install_log")"
set -e
printf '%s\n' "$report" >>"$install_log"
MLPD_REPORT="$report" "$venv/bin/python" - "$install_log" <<'PY' || say "mlpd doctor did not run; see $install_log"
import json, os, sys
checks = json.loads(os.environ["MLPD_REPORT"])["checks"]
bad = [c for c in checks if c["status"] != "ok"]
fails = sum(c["status"] == "fail" for c in checks)
print(f"==> mlpd doctor: {len(checks) - len(bad)} of {len(checks)} checks ok" + (f", {fails} block work: fix them" if fails else ""))
for c in bad:
    print(f"    {c['status'].upper():<4}  {c['name']}: {c['detail']}" + (f"\n          fix: {c['fix']}" if c["fix"] else ""))
PY
