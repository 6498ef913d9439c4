#!/usr/bin/env bash
# The test command (`make test`): installs what is missing, then runs every
# check: format, lints, unit tests, the runner's tests, the integration tests
# against `wrangler dev`, and a deploy dry run with a bundle-size budget.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

step "setup"
bash scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (native, all targets)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo clippy (wasm Worker)"
cargo clippy --lib --target wasm32-unknown-unknown --quiet -- -D warnings

step "build the wasm Worker and the runner"
bash scripts/build-worker.sh
cargo build --quiet -p cloudbox-runner

step "tests: unit, runner, integration (wrangler dev)"
cargo test --workspace --quiet

step "wrangler deploy --dry-run"
rm -rf dist
CLOUDBOX_SKIP_BUILD=1 scripts/wrangler deploy --dry-run --containers-rollout=none --outdir dist >dist.log 2>&1 || { cat dist.log; exit 1; }
rm -f dist.log
bash scripts/bundle-size.sh dist

echo
echo "all checks passed"
