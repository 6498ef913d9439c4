#!/usr/bin/env bash
# The test command (`make test`): installs what is missing (the toolchain,
# the npm packages, a Docker engine and the container images), then runs
# every check: format, lints, unit tests, the runner's tests, the
# integration tests against `wrangler dev` with real Containers, and a
# deploy dry run with budgets for the bundle and the runner image.
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

step "container engine and images"
# An engine that answers is used as it is; else we start our own, which
# stops when the tests (and whatever else uses it) are done.
engine=$(bash scripts/container-engine.sh start --for $$)
trap 'bash scripts/container-engine.sh release $$' EXIT
export DOCKER_HOST=$(echo "$engine" | sed -n 's/^DOCKER_HOST=//p')
# The images once for the whole suite: the test binaries take them from
# the environment instead of each checking them again.
images=$(bash scripts/container-images.sh local)
while IFS='=' read -r name value; do export "$name=$value"; done <<< "$images"
export CLOUDBOX_IMAGES_READY=1
bash scripts/image-size.sh "$CLOUDBOX_RUNNER_IMAGE"

step "a headless browser (the proof page tests)"
CLOUDBOX_CHROMIUM=$(bash scripts/browser.sh)
export CLOUDBOX_CHROMIUM
echo "$CLOUDBOX_CHROMIUM"

step "tests: unit, runner, integration (wrangler dev)"
cargo test --workspace --quiet

step "wrangler deploy --dry-run"
rm -rf dist
CLOUDBOX_SKIP_BUILD=1 scripts/wrangler deploy --dry-run --containers-rollout=none --outdir dist >dist.log 2>&1 || { cat dist.log; exit 1; }
rm -f dist.log
bash scripts/bundle-size.sh dist

echo
echo "all checks passed"
