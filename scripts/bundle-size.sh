#!/usr/bin/env bash
# Prints the gzip'd size of the deployable bundle (JS + wasm) in DIR and fails
# above the budget (640 KiB; #14 aimed at 450; Workers' free-plan limit is 3 MiB compressed).
set -euo pipefail
dir=${1:-dist}
budget=$((640 * 1024))
raw=$(find "$dir" -type f \( -name '*.js' -o -name '*.mjs' -o -name '*.wasm' \) -print0 | xargs -0 cat | wc -c)
gz=$(find "$dir" -type f \( -name '*.js' -o -name '*.mjs' -o -name '*.wasm' \) -print0 | xargs -0 cat | gzip -9 | wc -c)
printf 'bundle: %d KiB raw, %d KiB gzip (budget %d KiB gzip)\n' $((raw / 1024)) $((gz / 1024)) $((budget / 1024))
if [ "$gz" -gt "$budget" ]; then
  echo "bundle: over budget" >&2
  exit 1
fi
