#!/usr/bin/env bash
# The test suite's browser: Debian's chromium + chromium-driver (the playground's e2e test drives
# the page in headless Chromium). Installs them when missing and run as root; otherwise prints
# the exact command to run.
set -euo pipefail
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)

if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "bootstrap: installing ${missing[*]} (for the playground's browser test)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
else
  echo "bootstrap: missing system packages for the browser test; run: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
