# Sourced by demo.sh and test.sh: make .venv from a Python 3.11+ and install hasync into it.
# Usage: . scripts/venv.sh EXTRAS   (EXTRAS: "" or "[test]")

need_debs() {  # install Debian packages when root and missing
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 0
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The system interpreter first: an unprivileged user can run it too (some test
# agents drop to 'nobody' when the suite runs as root).
py=""
for cand in /usr/bin/python3.11 /usr/bin/python3 "$(command -v python3.11 || true)" "$(command -v python3 || true)"; do
  if [ -n "$cand" ] && [ -x "$cand" ] && "$cand" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    py=$cand; break
  fi
done
[ -n "$py" ] || { echo "hasync needs Python 3.11 or newer" >&2; exit 2; }
"$py" -c 'import venv, ensurepip' 2>/dev/null || need_debs python3-venv

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  rm -rf .venv
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${1:-}"
