#!/usr/bin/env bash
# Lint and type-check mlpd: ruff on the whole project, mypy on mlpd/ with web/ and workers/.
#   ./tools/lint.sh        uses .venv (made by ./tests/run.sh --fast, or here) with the test extra
# Settings live in pyproject.toml ([tool.ruff], [tool.mypy]). Exits non-zero on any finding.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python="${MLPD_PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -c 'import mlpd.web, ruff, mypy' 2>/dev/null || .venv/bin/pip install -q -e '.[test]'

rc=0
echo "== ruff check ."
.venv/bin/ruff check . || rc=1

# web/ and workers/ install as mlpd.web and mlpd.workers (pyproject's package-dir). mypy cannot map
# a folder to another package name, so it reads a tree of links laid out the installed way; its
# messages name the files in the repository.
echo "== mypy mlpd (with web/ as mlpd.web, workers/ as mlpd.workers)"
tree="$(mktemp -d)"
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/mlpd"
for entry in mlpd/*; do
  [ "$(basename "$entry")" = __pycache__ ] || ln -s "$PWD/$entry" "$tree/mlpd/"
done
ln -s "$PWD/web" "$tree/mlpd/web"
ln -s "$PWD/workers" "$tree/mlpd/workers"
ln -s "$PWD/images" "$tree/mlpd/images"
( cd "$tree" && "$OLDPWD/.venv/bin/mypy" --config-file "$OLDPWD/pyproject.toml" --cache-dir "$OLDPWD/.mypy_cache" mlpd ) \
  | sed -e 's#^mlpd/web/#web/#' -e 's#^mlpd/workers/#workers/#' -e 's#^mlpd/images/#images/#' || rc=1
exit $rc
