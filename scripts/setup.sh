#!/usr/bin/env bash
# Installs what building, running and testing Cloudbox needs, skipping what is
# already there: the wasm target, rustfmt/clippy, worker-build, the
# wasm-bindgen CLI that matches Cargo.lock, and the npm packages (wrangler,
# esbuild, and a Node 22 for wrangler). Safe to run any number of times.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKER_BUILD_VERSION=0.8.7
WASM_BINDGEN_VERSION=0.2.130
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
say() { echo "setup: $*"; }

locked=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
if [ "$locked" != "$WASM_BINDGEN_VERSION" ]; then
  echo "setup: Cargo.lock has wasm-bindgen $locked but setup installs $WASM_BINDGEN_VERSION; pin them equal" >&2
  exit 1
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  say "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi
for component in rustfmt clippy; do
  if ! rustup component list --installed | grep -q "^$component"; then
    say "adding $component"
    rustup component add "$component"
  fi
done

if [ "$("$CARGO_BIN/worker-build" --version 2>/dev/null)" != "$WORKER_BUILD_VERSION" ]; then
  say "installing worker-build $WORKER_BUILD_VERSION (a few minutes)"
  cargo install worker-build --version "$WORKER_BUILD_VERSION"
fi
if [ "$("$CARGO_BIN/wasm-bindgen" --version 2>/dev/null)" != "wasm-bindgen $WASM_BINDGEN_VERSION" ]; then
  # No --locked: its locked webpki-roots is not on crates.io any more.
  say "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION (a few minutes)"
  cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi

# npm packages: reinstall only when package-lock.json changed.
lock_sum=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat node_modules/.cloudbox-lock 2>/dev/null)" != "$lock_sum" ]; then
  say "installing npm packages"
  # npm ci refuses this lockfile (it lacks the other platforms' optional
  # workerd packages), so install from it with npm install.
  npm install --no-audit --no-fund --loglevel=error
  echo "$lock_sum" > node_modules/.cloudbox-lock
fi

say "ok"
