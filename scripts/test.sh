#!/usr/bin/env bash
# The whole test suite, installing what it needs: Debian packages with apt-get when root,
# Python packages in a virtual environment (.venv). CI runs exactly this (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

# Debian packages the tests use: rsync (benchmarks), ping/ip/nft (network faults),
# PostgreSQL (alarm store), the venv module.
debs=(python3-venv rsync iputils-ping iproute2 nftables postgresql)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

# A Python 3.11+ that an unprivileged user can run too (the agents of some tests drop
# to 'nobody' when the suite runs as root): prefer the system interpreter.
py=""
for cand in /usr/bin/python3.11 /usr/bin/python3 "$(command -v python3.11 || true)" "$(command -v python3 || true)"; do
  if [ -n "$cand" ] && [ -x "$cand" ] && "$cand" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    py=$cand; break
  fi
done
[ -n "$py" ] || { echo "hasync needs Python 3.11 or newer" >&2; exit 2; }

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  rm -rf .venv
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"

if [ "$(id -u)" = 0 ]; then
  # Let the unprivileged test agents reach the interpreter and the sources.
  d=$repo
  while [ "$d" != / ]; do
    mode=$(stat -c %a "$d")
    [ $(( 0$mode & 01 )) -ne 0 ] || chmod o+x "$d"
    d=$(dirname "$d")
  done
  chmod -R o+rX "$repo/src" "$repo/.venv" "$repo/tests"
fi

.venv/bin/ruff check src tests bench
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
