#!/usr/bin/env bash
# Install mlpd on this machine and start it as a service. Idempotent: run it again to upgrade.
#
#   sudo ./install.sh                 everything: Docker engine, venv, config, state, images, service, first admin
#   sudo ./install.sh --engine-only   only the Docker engine and debootstrap (used by tests/run.sh)
#
# Settings (environment): MLPD_PREFIX (/opt/mlpd), MLPD_STATE_DIR (/var/lib/mlpd),
# MLPD_CONFIG_DIR (/etc/mlpd), MLPD_LISTEN (127.0.0.1:8470), MLPD_ADMIN (admin),
# MLPD_PYTHON (python3, 3.11 or newer).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prefix="${MLPD_PREFIX:-/opt/mlpd}"
state_dir="${MLPD_STATE_DIR:-/var/lib/mlpd}"
config_dir="${MLPD_CONFIG_DIR:-/etc/mlpd}"
listen="${MLPD_LISTEN:-127.0.0.1:8470}"
admin="${MLPD_ADMIN:-admin}"
python="${MLPD_PYTHON:-python3}"
log_file="${MLPD_LOG:-/var/log/mlpd.log}"
pid_file="${MLPD_PID_FILE:-/run/mlpd.pid}"

say() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

have_systemd() { [ -d /run/systemd/system ] && [ "$(ps -p 1 -o comm= 2>/dev/null)" = systemd ]; }

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "need root to install ${missing[*]} (run with sudo)"
  command -v apt-get >/dev/null || die "no apt-get: install ${missing[*]} yourself"
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_engine() {
  if ! command -v dockerd >/dev/null 2>&1; then apt_install docker.io; fi
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  if docker info >/dev/null 2>&1; then return 0; fi
  if have_systemd; then
    say "starting Docker (systemd)"
    systemctl enable --now docker >/dev/null
  else
    say "starting dockerd in the background (no systemd here); log in /var/log/dockerd.log"
    nohup dockerd >/var/log/dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && return 0; sleep 1; done
  die "the Docker engine did not answer; see /var/log/dockerd.log"
}

if [ "${1:-}" = "--engine-only" ]; then ensure_engine; exit 0; fi
[ $# -eq 0 ] || die "unknown argument $1 (see the comments at the top of install.sh)"

ensure_engine
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$python is older than 3.11; set MLPD_PYTHON"
"$python" -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv

say "installing mlpd into $prefix/venv"
mkdir -p "$prefix"
[ -x "$prefix/venv/bin/python" ] || "$python" -m venv "$prefix/venv"
"$prefix/venv/bin/pip" install -q --upgrade "$repo" 2>&1 | grep -v "^WARNING: Location" || true
ln -sf "$prefix/venv/bin/mlpd" /usr/local/bin/mlpd 2>/dev/null || true
mlpd_bin="$prefix/venv/bin/mlpd"

mkdir -p "$config_dir" "$state_dir"
chmod 0700 "$state_dir"
config="$config_dir/mlpd.toml"
if [ ! -f "$config" ]; then
  say "writing $config"
  sed -e "s|^state_dir = .*|state_dir = \"$state_dir\"|" -e "s|^listen = .*|listen = \"$listen\"|" "$repo/mlpd.toml" >"$config"
fi

say "building images that are missing (the first time takes a few minutes)"
"$mlpd_bin" images build --local --config "$config"

url="http://$listen"
if have_systemd; then
  say "installing the systemd unit mlpd.service"
  cat >/etc/systemd/system/mlpd.service <<UNIT
[Unit]
Description=mlpd ML platform daemon
After=network-online.target docker.service
Wants=docker.service

[Service]
Type=notify
NotifyAccess=all
ExecStart=$mlpd_bin daemon --config $config
Restart=on-failure
RestartSec=3
TimeoutStopSec=30

[Install]
WantedBy=multi-user.target
UNIT
  systemctl daemon-reload
  systemctl enable mlpd >/dev/null
  systemctl restart mlpd
else
  # The daemon writes its pid into the state directory's lock file; that is the one to restart.
  old_pid="$(cat "$state_dir/daemon.lock" 2>/dev/null || true)"
  if [ -n "$old_pid" ] && kill -0 "$old_pid" 2>/dev/null; then
    say "restarting the running daemon (pid $old_pid)"
    kill -TERM "$old_pid"
    for _ in $(seq 1 40); do kill -0 "$old_pid" 2>/dev/null || break; sleep 0.5; done
  fi
  say "no systemd here: starting 'mlpd daemon' in the background; log in $log_file"
  (cd / && exec setsid "$mlpd_bin" daemon --config "$config" >>"$log_file" 2>&1 </dev/null) &
fi

for _ in $(seq 1 60); do
  curl -fsS "$url/healthz" >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS "$url/healthz" >/dev/null || die "the daemon did not answer on $url/healthz; see $log_file (or journalctl -u mlpd)"
say "mlpd answers on $url"
if ! have_systemd; then
  cat "$state_dir/daemon.lock" >"$pid_file"
  say "daemon pid $(cat "$pid_file") (in $pid_file)"
fi

say "checking the host (mlpd doctor)"
"$mlpd_bin" doctor --config "$config" || say "mlpd doctor found problems (above); mlpd runs, but fix them"

if [ "$("$mlpd_bin" admin user list --state-dir "$state_dir" --json | "$prefix/venv/bin/python" -c 'import json,sys; print(sum(u["role"]=="admin" for u in json.load(sys.stdin)["users"]))')" = 0 ]; then
  token="$("$mlpd_bin" admin user add "$admin" --admin --state-dir "$state_dir" | tail -n 1)"
  say "created the first admin '$admin'. Log in with:"
  echo "    mlpd login $url --token $token"
else
  say "admins exist already; create users with: mlpd admin user add NAME"
fi
