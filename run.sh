#!/usr/bin/env bash
# The README's two commands: `./run.sh demo` runs the whole demo on the embedded
# default, `./run.sh test` runs every test. Both create or reuse .venv in the repo root.
set -euo pipefail
cd "$(dirname "$0")"

ensure_venv() {
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  # Reinstall only when the dependency list changed.
  local stamp=.venv/.driftloop-installed
  local want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing driftloop and its dependencies into .venv (about 2 minutes the first time)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[dev]"
    echo "$want" >"$stamp"
  fi
}

command=${1:-}
shift || true
case "$command" in
  demo)
    ensure_venv
    exec .venv/bin/driftloop demo --quick "$@"
    ;;
  test)
    ensure_venv
    .venv/bin/ruff check .
    exec .venv/bin/pytest "$@"
    ;;
  *)
    echo "usage: ./run.sh demo [--no-ui] | ./run.sh test [pytest args]" >&2
    exit 2
    ;;
esac
