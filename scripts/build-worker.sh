#!/usr/bin/env bash
# Builds the wasm Worker into build/ with worker-build, without the GitHub
# downloads it would otherwise attempt (wasm-bindgen and esbuild come from
# scripts/setup.sh; wasm-opt is skipped). Does nothing when the sources are
# unchanged since the last build, or when CLOUDBOX_SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${CLOUDBOX_SKIP_BUILD:-}" = 1 ] && exit 0

stamp=build/.source-sum
sum=$(find Cargo.toml Cargo.lock src -type f -print0 | sort -z | xargs -0 cat | sha256sum | cut -d' ' -f1)
if [ -f build/worker/shim.mjs ] && [ "$(cat "$stamp" 2>/dev/null)" = "$sum" ]; then
  echo "worker: up to date"
  exit 0
fi

CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export WASM_BINDGEN_BIN="$CARGO_BIN/wasm-bindgen"
export ESBUILD_BIN="$PWD/node_modules/.bin/esbuild"
"$CARGO_BIN/worker-build" --release --no-opt
echo "$sum" > "$stamp"
