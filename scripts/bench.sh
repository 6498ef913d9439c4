#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/.."
# Workspace sync: first push / no-change / one-file re-push vs naive full upload.
cargo run --quiet --example workspace_sync_bench
