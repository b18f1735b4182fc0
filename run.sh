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

# The system packages the tests run for real: PostgreSQL (scale-out stores), promtool (the
# alert rules), the Pushgateway (monitoring gauges) and wrk (the serving benchmark).
ensure_test_packages() {
  local need=()
  command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
  command -v promtool >/dev/null || need+=(prometheus)
  command -v prometheus-pushgateway >/dev/null || need+=(prometheus-pushgateway)
  command -v wrk >/dev/null || need+=(wrk)
  [ ${#need[@]} -eq 0 ] && return
  if [ "$(id -u)" -ne 0 ]; then
    echo "the tests need these Debian packages; install them as root (apt-get install ${need[*]}) and run again" >&2
    exit 1
  fi
  echo "installing system packages for the tests: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

command=${1:-}
shift || true
case "$command" in
  demo)
    ensure_venv
    exec .venv/bin/driftloop demo --quick "$@"
    ;;
  test)
    ensure_test_packages
    ensure_venv
    .venv/bin/ruff check .
    exec .venv/bin/pytest "$@"
    ;;
  *)
    echo "usage: ./run.sh demo [--no-ui] | ./run.sh test [pytest args]" >&2
    exit 2
    ;;
esac
