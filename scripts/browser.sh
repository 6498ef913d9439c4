#!/usr/bin/env bash
# Prints the path of a headless-capable Chromium for the tests of the proof
# page (tests/runs.rs): `$CLOUDBOX_CHROMIUM`, else `chromium` on PATH; as
# root on Debian, installs Debian's `chromium` package when it is missing.
set -euo pipefail
say() { echo "browser: $*" >&2; }
if [ -n "${CLOUDBOX_CHROMIUM:-}" ] && [ -x "$CLOUDBOX_CHROMIUM" ]; then
  echo "$CLOUDBOX_CHROMIUM"; exit 0
fi
for name in chromium chromium-browser; do
  if path=$(command -v "$name"); then echo "$path"; exit 0; fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  say "installing Debian's chromium (for the proof page tests)"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; }; }; then
    say "apt-get install chromium failed"; exit 1
  fi
  command -v chromium; exit 0
fi
say "no Chromium: install Debian's chromium package, or set CLOUDBOX_CHROMIUM"
exit 1
