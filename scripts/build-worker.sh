#!/usr/bin/env bash
# Builds the wasm Worker into build/ with worker-build, without the GitHub
# downloads it would otherwise attempt (wasm-bindgen and esbuild come from
# scripts/setup.sh), then strips the wasm's name and producers sections
# with binaryen's wasm-opt (npm). Does nothing when the sources are
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
# Only the strip: measured on this bundle, wasm-opt's -Oz/-Os make the wasm
# smaller raw but larger gzip'd (what Workers' limit counts), and take
# minutes; the strip takes seconds and removes ~180 KiB gzip of symbol names.
node_modules/.bin/wasm-opt --all-features --strip-debug --strip-producers \
  build/index_bg.wasm -o build/index_bg.wasm
echo "$sum" > "$stamp"
