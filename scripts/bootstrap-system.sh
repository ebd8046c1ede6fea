#!/usr/bin/env bash
# Make sure the system has what `make install` needs on a fresh Debian/Ubuntu machine:
# Python >= 3.11 with venv, and a C/C++ toolchain + cmake (llama-cpp-python builds from
# source). Installs the missing Debian packages when run as root; otherwise prints the
# exact command to run.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
missing=()

if ! command -v "$PYTHON" >/dev/null; then
  echo "bootstrap: $PYTHON not found; install Python 3.11+ (Debian: apt-get install python3)" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "bootstrap: $PYTHON is $("$PYTHON" -V 2>&1); ragroute needs Python 3.11+ (set PYTHON=python3.11)" >&2
  exit 1
fi
# Debian splits venv/ensurepip into python3-venv.
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then missing+=(python3-venv); fi
command -v cc >/dev/null || missing+=(build-essential)
command -v c++ >/dev/null || missing+=(g++)
command -v cmake >/dev/null || missing+=(cmake)

if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "bootstrap: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
else
  echo "bootstrap: missing system packages; run: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
