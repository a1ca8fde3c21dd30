#!/usr/bin/env bash
# Headless Chromium for the browser tests of `bon view` (Debian's `chromium` package). Never fails: without a
# browser those tests skip, saying so. scripts/test.sh runs this first.
set -uo pipefail
for name in chromium chromium-browser google-chrome; do
  command -v "$name" >/dev/null && exit 0
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing chromium (apt-get) for the browser tests"
  apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "chromium could not be installed: the browser tests will skip"
else
  echo "no chromium and no root apt-get: the browser tests will skip (install Debian's chromium to run them)"
fi
exit 0
