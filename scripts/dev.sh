#!/usr/bin/env bash
# The run command (`make dev`): the full local stack. Installs what is
# missing, builds, applies D1 migrations, starts the runner natively and
# `wrangler dev` on 127.0.0.1:8787, and prints how to mint a first key.
#
# Environment:
#   PORT=8787           Worker port
#   RUNNER_PORT=8788    runner port (the Container's stand-in)
#   CLOUDBOX_STATE=.cloudbox/state   local D1/R2/DO state (kept between runs)
#   CLOUDBOX_GITHUB_MIRROR=DIR        offline runs: the runner clones
#                       https://github.com/<owner>/<repo> from DIR/<owner>/<repo>.git
#   CLOUDBOX_SCRIPTED_MODEL=1          /execute without a model key: starts the
#                       tests' scripted Responses-API server and points the agent at it
#   AGENT_MODEL_BASE_URL, AGENT_MODEL, AGENT_COMMAND   override wrangler.toml's
#                       (the model key is OPENAI_API_KEY in .dev.vars)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8787}
RUNNER_PORT=${RUNNER_PORT:-8788}
STATE=${CLOUDBOX_STATE:-.cloudbox/state}

bash scripts/setup.sh
bash scripts/build-worker.sh
cargo build --quiet -p cloudbox-runner
mkdir -p .cloudbox

# A dev admin key, made once and kept in .dev.vars (git-ignored), which
# wrangler dev reads for secrets.
if ! grep -q '^ADMIN_API_KEY=' .dev.vars 2>/dev/null; then
  echo "ADMIN_API_KEY=dev-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" >> .dev.vars
fi
ADMIN_API_KEY=$(sed -n 's/^ADMIN_API_KEY=//p' .dev.vars | head -1)

CI=true scripts/wrangler d1 migrations apply DB --local --persist-to "$STATE" >/dev/null

CLOUDBOX_GITHUB_MIRROR="${CLOUDBOX_GITHUB_MIRROR:-}" RUNNER_LISTEN="127.0.0.1:$RUNNER_PORT" \
  CODEX_BIN="${CODEX_BIN:-$PWD/node_modules/.bin/codex}" \
  target/debug/cloudbox-runner > .cloudbox/runner.log 2>&1 &
runner_pid=$!
pids="$runner_pid"
trap 'kill $pids 2>/dev/null' EXIT

agent_vars=()
if [ -n "${CLOUDBOX_SCRIPTED_MODEL:-}" ]; then
  cargo build --quiet --example scripted_model
  target/debug/examples/scripted_model > .cloudbox/model.url 2> .cloudbox/model.log &
  pids="$pids $!"
  for _ in $(seq 50); do [ -s .cloudbox/model.url ] && break; sleep 0.1; done
  AGENT_MODEL_BASE_URL=$(head -1 .cloudbox/model.url)
  AGENT_MODEL=${AGENT_MODEL:-scripted}
  echo "scripted model server: $AGENT_MODEL_BASE_URL"
fi
for name in AGENT_MODEL_BASE_URL AGENT_MODEL AGENT_COMMAND; do
  if [ -n "${!name:-}" ]; then agent_vars+=(--var "$name:${!name}"); fi
done

cat <<MSG

Cloudbox is starting on http://127.0.0.1:$PORT (runner on 127.0.0.1:$RUNNER_PORT, log .cloudbox/runner.log).
Mint a first API key with the dev admin key (kept in .dev.vars):

  curl -s -X POST http://127.0.0.1:$PORT/admin/keys \\
    -H 'authorization: Bearer $ADMIN_API_KEY' \\
    -H 'content-type: application/json' -d '{"name":"me"}'

MSG
CLOUDBOX_SKIP_BUILD=1 scripts/wrangler dev --local --ip 127.0.0.1 --port "$PORT" \
  --persist-to "$STATE" --var "RUNNER_URL:http://127.0.0.1:$RUNNER_PORT" "${agent_vars[@]}"
