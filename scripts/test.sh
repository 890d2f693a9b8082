#!/usr/bin/env bash
# The whole test suite, installing what it needs: Debian packages with apt-get when root,
# Python packages in a virtual environment (.venv). CI runs exactly this (.ci/run).
# Extra arguments go to pytest (e.g. scripts/test.sh tests/test_config.py -x).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
. scripts/venv.sh "[test]"
# rsync (benchmark smoke test), ping/ip/nft (network faults), PostgreSQL (alarm store),
# the monitoring programs the monitoring tests run for real (Prometheus with promtool, Alertmanager,
# rsyslog, Nagios 4, Icinga 2), the HA managers' tools (keepalived; ocf-tester of resource-agents,
# which validates the OCF meta-data with xmllint; crm_attribute of pacemaker-cli-utils, on a CIB file).
need_debs rsync iputils-ping iproute2 nftables postgresql \
  prometheus prometheus-alertmanager rsyslog nagios4-core icinga2-bin \
  keepalived resource-agents libxml2-utils pacemaker-cli-utils

if [ "$(id -u)" = 0 ]; then
  # Let the unprivileged test agents reach the interpreter and the sources.
  d=$repo
  while [ "$d" != / ]; do
    [ $(( 0$(stat -c %a "$d") & 01 )) -ne 0 ] || chmod o+x "$d"
    d=$(dirname "$d")
  done
  chmod -R o+rX "$repo/src" "$repo/.venv" "$repo/tests" "$repo/packaging"
fi

.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
exec .venv/bin/python -m pytest "$@"
