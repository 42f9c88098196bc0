#!/usr/bin/env bash
# Run mlpd's test suite: sets up what it needs (Docker engine, a dev venv, images) and runs pytest.
#   ./tests/run.sh [pytest args]          everything: unit, api, contract, integration, browser
#   ./tests/run.sh --fast [pytest args]   tests/unit, tests/api and the in-memory half of tests/contract:
#                                         no Docker engine, images, apt or browser; only the dev venv
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python="${MLPD_PYTHON:-python3}"
if [ "${1:-}" = "--fast" ]; then
  shift
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  # Install only when the venv lacks the package (pip's resolution alone costs seconds).
  .venv/bin/python -c 'import mlpd.web, pytest' 2>/dev/null || .venv/bin/pip install -q -e '.[test]'
  exec .venv/bin/python -m pytest -m fast tests/unit tests/api tests/contract "$@"
fi

if ! docker info >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  ./install.sh --engine-only
fi
# A real OpenSSH server (the workspace tunnel tests start their own on a loopback port).
if ! [ -x /usr/sbin/sshd ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null
fi
# nginx, the daemon's front (server.front = auto uses it when installed; tests/integration/test_abuse.py needs it).
if ! command -v nginx >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
fi
# HAProxy, the serving proxy (serving.listen = auto runs it when installed; tests/integration/test_serving_proxy.py needs it).
if ! command -v haproxy >/dev/null 2>&1 && ! [ -x /usr/sbin/haproxy ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
fi
# A real one-node Slurm cluster (tests/integration/test_slurm.py starts munged, slurmctld and slurmd itself, no systemd).
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install -q -e '.[test]'
.venv/bin/mlpd images build --local --config mlpd.toml
# The browser tests (tests/browser) drive Debian's chromium through Playwright; Playwright's own
# browser downloads are never used (no such download is reachable here).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "tests/run.sh: chromium is missing and this is not root; the browser tests will be skipped (apt-get install chromium)" >&2
  fi
fi
exec .venv/bin/python -m pytest "$@"
