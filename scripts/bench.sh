#!/usr/bin/env bash
# Benchmarks (`make bench`). Each bench is a named entry below; with no
# argument every bench runs, else only the ones named:
#   scripts/bench.sh            # all
#   scripts/bench.sh runs       # just the repo-run overhead
# BENCH_RUNS=N sets the number of measured runs where a bench takes it.
set -euo pipefail
cd "$(dirname "$0")/.."

bench_runs() {
  # Repo run through the whole local stack vs. the same clone + commands by
  # a plain shell script (tests/bench_runs.rs, an ignored test binary that
  # starts its own runner and wrangler dev like the integration tests).
  bash scripts/setup.sh >/dev/null
  cargo test --quiet --test bench_runs -- --ignored --nocapture --test-threads=1
}

bench_workspaces() {
  # Workspace sync: first push / no-change / one-file re-push vs naive full
  # upload (examples/workspace_sync_bench.rs, against its own wrangler dev).
  bash scripts/setup.sh >/dev/null
  cargo run --quiet --example workspace_sync_bench
}

bench_execute() {
  # POST /execute on a 200-file workspace through the whole stack (real Codex
  # CLI, scripted model) vs the same task POSTed to the runner alone
  # (tests/bench_execute.rs, an ignored test binary).
  bash scripts/setup.sh >/dev/null
  CODEX_BIN="${CODEX_BIN:-$PWD/node_modules/.bin/codex}" \
    cargo test --quiet --test bench_execute -- --ignored --nocapture --test-threads=1
}

bench_cli() {
  # The cloudbox CLI: push of a 500-file / 50 MB tree vs the sync client and
  # a naive client; exec on a 200-file workspace vs the same POST /execute
  # (cli/tests/bench_cli.rs, an ignored test binary).
  bash scripts/setup.sh >/dev/null
  cargo test --quiet -p cloudbox-cli --test bench_cli -- --ignored --nocapture --test-threads=1
}

bench_live() {
  # Live runs: stop + resume of a 500-file / 50 MB checkout, a second stop
  # after a one-file change, and a fork, vs a naive tar of the tree to R2 and
  # back (tests/bench_live.rs, an ignored test binary with real containers).
  bash scripts/setup.sh >/dev/null
  cargo test --quiet --test bench_live -- --ignored --nocapture --test-threads=1
}

bench_grade() {
  # Grading 100 000 receipts against a 50-criterion rubric, natively, next to
  # a deep clone of the same receipts (examples/bench_grade.rs).
  cargo run --profile bench-native --quiet --example bench_grade
}

bench_computers() {
  # The computer surface on the local stack: GET read (sequential and 8
  # clients), receipt appends, and GET grade at 1 000 and 10 000 receipts
  # (tests/bench_computers.rs, an ignored test binary).
  bash scripts/setup.sh >/dev/null
  cargo test --quiet --test bench_computers -- --ignored --nocapture --test-threads=1
}

bench_routes() {
  # Per-route latency of the hot routes against the stack's own floor
  # (GET /health), round-robin on one keep-alive client, with each route's
  # D1 round trips by design (tests/bench_routes.rs, an ignored test binary).
  bash scripts/setup.sh >/dev/null
  cargo test --quiet --test bench_routes -- --ignored --nocapture --test-threads=1
}

bench_bundle() {
  # The deployable bundle (JS + wasm, gzip) against its budget, from the
  # same dry run the tests make.
  bash scripts/setup.sh >/dev/null
  bash scripts/build-worker.sh
  local out
  out=$(mktemp -d)
  CLOUDBOX_SKIP_BUILD=1 scripts/wrangler deploy --dry-run --containers-rollout=none --outdir "$out" >"$out.log" 2>&1 \
    || { cat "$out.log"; exit 1; }
  grep -o 'Total Upload: .*' "$out.log" || true
  bash scripts/bundle-size.sh "$out"
  rm -rf "$out" "$out.log"
}

all=(runs workspaces execute cli live grade computers routes bundle)
selected=("$@")
[ ${#selected[@]} -eq 0 ] && selected=("${all[@]}")
for name in "${selected[@]}"; do
  if ! declare -F "bench_$name" >/dev/null; then
    echo "bench.sh: unknown bench '$name' (known: ${all[*]})" >&2
    exit 2
  fi
  echo "==> bench: $name"
  "bench_$name"
done
