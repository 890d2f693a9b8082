#!/usr/bin/env bash
# The embedded default: both nodes on this machine. Installs hasync into .venv, then runs
# `hasync demo` (extra arguments go to it, e.g. --dir /tmp/demo). Ctrl-C stops both agents.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh ""
exec .venv/bin/hasync demo "$@"
