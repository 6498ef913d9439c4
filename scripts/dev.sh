#!/usr/bin/env bash
# The run command (`make dev`): the full local stack. Installs what is
# missing, builds, applies D1 migrations and starts `wrangler dev` on
# 127.0.0.1:8787, then prints how to mint a first key.
#
# The runner: in real Containers (one per run and per workspace, built from
# container/Dockerfile) when a Docker engine answers or can be started here
# (scripts/container-engine.sh); otherwise, with a message, as one native
# process on 127.0.0.1:$RUNNER_PORT that every run shares (no isolation).
#
# Environment:
#   PORT=8787           Worker port
#   CLOUDBOX_RUNNER=auto|containers|native   force one runner mode
#   RUNNER_PORT=8788    the native runner's port
#   CLOUDBOX_STATE=.cloudbox/state   local D1/R2/DO state (kept between runs)
#   CLOUDBOX_GITHUB_MIRROR=DIR        offline runs: https://github.com/<owner>/<repo>
#                       is cloned from DIR/<owner>/<repo>.git (for containers,
#                       served by `git daemon` on the bridge address)
#   CLOUDBOX_SCRIPTED_MODEL=1|0        the model /execute's agent talks to.
#                       Unset: the tests' scripted Responses-API server
#                       (examples/scripted_model.rs) when .dev.vars has no
#                       OPENAI_API_KEY=<non-empty> and AGENT_MODEL_BASE_URL is
#                       not set here, else the real model. 1 forces the
#                       scripted one, 0 the real one. The banner says which.
#   AGENT_MODEL_BASE_URL, AGENT_MODEL, AGENT_COMMAND   override wrangler.toml's
#                       (the model key is OPENAI_API_KEY in .dev.vars)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8787}
RUNNER_PORT=${RUNNER_PORT:-8788}
STATE=${CLOUDBOX_STATE:-.cloudbox/state}
MODE=${CLOUDBOX_RUNNER:-auto}

bash scripts/setup.sh
bash scripts/build-worker.sh
mkdir -p .cloudbox

# A dev admin key, made once and kept in .dev.vars (git-ignored), which
# wrangler dev reads for secrets.
if ! grep -q '^ADMIN_API_KEY=' .dev.vars 2>/dev/null; then
  echo "ADMIN_API_KEY=dev-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" >> .dev.vars
fi
ADMIN_API_KEY=$(sed -n 's/^ADMIN_API_KEY=//p' .dev.vars | head -1)

CI=true scripts/wrangler d1 migrations apply DB --local --persist-to "$STATE" >/dev/null

pids=""
cleanup() {
  [ -n "$pids" ] && { kill $pids 2>/dev/null || true; }
  [ -n "$engine" ] && bash scripts/container-engine.sh release $$
  return 0
}
trap cleanup EXIT

vars=()
engine=""
if [ "$MODE" != native ] && engine=$(bash scripts/container-engine.sh start --for $$); then
  export DOCKER_HOST=$(echo "$engine" | sed -n 's/^DOCKER_HOST=//p')
  images=$(bash scripts/container-images.sh local)
  while IFS='=' read -r name value; do export "$name=$value"; done <<< "$images"
  bridge=$(docker network inspect bridge --format '{{(index .IPAM.Config 0).Gateway}}')
  MODE=containers
  listen_ip=$bridge
  runner_note="the runner runs in Containers (Docker at $DOCKER_HOST; one per run and per workspace)"
  if [ -n "${CLOUDBOX_GITHUB_MIRROR:-}" ]; then
    git_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("",0)); print(s.getsockname()[1])')
    git daemon --base-path="$CLOUDBOX_GITHUB_MIRROR" --export-all --reuseaddr \
      --listen="$bridge" --port="$git_port" > .cloudbox/git-daemon.log 2>&1 &
    pids="$pids $!"
    vars+=(--var "RUNNER_GITHUB_MIRROR:git://$bridge:$git_port/")
  fi
else
  if [ "$MODE" = containers ]; then
    echo "dev: CLOUDBOX_RUNNER=containers, but no Docker engine can be had here" >&2
    exit 1
  fi
  if [ "$MODE" = native ]; then
    echo "dev: CLOUDBOX_RUNNER=native: one runner process for every run and workspace, no isolation." >&2
  else
    echo "dev: no Docker engine answers or can be started here (it needs root, or Docker installed)," >&2
    echo "dev: so the runner runs natively: one process for every run and workspace, no isolation." >&2
  fi
  MODE=native
  listen_ip=127.0.0.1
  cargo build --quiet -p cloudbox-runner
  secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  RUNNER_SECRET="$secret" CLOUDBOX_GITHUB_MIRROR="${CLOUDBOX_GITHUB_MIRROR:-}" \
    RUNNER_LISTEN="127.0.0.1:$RUNNER_PORT" CODEX_BIN="${CODEX_BIN:-$PWD/node_modules/.bin/codex}" \
    target/debug/cloudbox-runner > .cloudbox/runner.log 2>&1 &
  pids="$pids $!"
  vars+=(--enable-containers=false --var "RUNNER_URL:http://127.0.0.1:$RUNNER_PORT" --var "RUNNER_SECRET:$secret")
  runner_note="the runner runs natively on 127.0.0.1:$RUNNER_PORT (log .cloudbox/runner.log)"
fi

# The model: the scripted one unless there is a key (or another model URL),
# so that a first /execute without a key works; CLOUDBOX_SCRIPTED_MODEL=1|0
# forces one or the other.
model_key=$({ sed -n 's/^[[:space:]]*OPENAI_API_KEY[[:space:]]*=[[:space:]]*//p' .dev.vars 2>/dev/null || true; } \
  | head -1 | tr -d "\"' \r")
case "${CLOUDBOX_SCRIPTED_MODEL:-}" in
  1) scripted=1 ;;
  0) scripted=0 ;;
  "") if [ -z "$model_key" ] && [ -z "${AGENT_MODEL_BASE_URL:-}" ]; then scripted=1; else scripted=0; fi ;;
  *) echo "dev: CLOUDBOX_SCRIPTED_MODEL must be 1 (the scripted model) or 0 (the real one)" >&2; exit 1 ;;
esac
if [ "$scripted" = 1 ]; then
  cargo build --quiet --example scripted_model
  rm -f .cloudbox/model.url
  target/debug/examples/scripted_model "$listen_ip" > .cloudbox/model.url 2> .cloudbox/model.log &
  pids="$pids $!"
  for _ in $(seq 50); do [ -s .cloudbox/model.url ] && break; sleep 0.1; done
  AGENT_MODEL_BASE_URL=$(head -1 .cloudbox/model.url)
  if [ -z "$AGENT_MODEL_BASE_URL" ]; then
    echo "dev: the scripted model server did not start (.cloudbox/model.log):" >&2
    cat .cloudbox/model.log >&2
    exit 1
  fi
  AGENT_MODEL=${AGENT_MODEL:-scripted}
  if [ -n "${CLOUDBOX_SCRIPTED_MODEL:-}" ]; then
    why="CLOUDBOX_SCRIPTED_MODEL=1"
    switch="Leave CLOUDBOX_SCRIPTED_MODEL unset, with OPENAI_API_KEY=sk-... in .dev.vars, to use the real model."
  else
    why="no OPENAI_API_KEY in .dev.vars"
    switch="Put OPENAI_API_KEY=sk-... in .dev.vars to use the real model."
  fi
  model_note="Model: the scripted model at $AGENT_MODEL_BASE_URL ($why; log .cloudbox/model.log).
  Tasks it understands: \`write <path> <text>\` (writes the file), \`loop\` (until the cost cap
  stops it), \`fail\` (a 500), \`slow\` (30 s); anything else is echoed.
  $switch"
else
  url=${AGENT_MODEL_BASE_URL:-$(sed -n 's/^AGENT_MODEL_BASE_URL *= *"\(.*\)"/\1/p' wrangler.toml)}
  model=${AGENT_MODEL:-$(sed -n 's/^AGENT_MODEL *= *"\(.*\)"/\1/p' wrangler.toml)}
  if [ -n "$model_key" ]; then
    model_note="Model: the real model $model at $url (OPENAI_API_KEY from .dev.vars)."
  else
    model_note="Model: $model at $url, without a key (no OPENAI_API_KEY in .dev.vars)."
    if [ -z "${AGENT_MODEL_BASE_URL:-}" ]; then
      model_note="$model_note
  Executes will fail: put OPENAI_API_KEY=sk-... in .dev.vars, or leave CLOUDBOX_SCRIPTED_MODEL unset for the scripted model."
    fi
  fi
fi
for name in AGENT_MODEL_BASE_URL AGENT_MODEL AGENT_COMMAND; do
  if [ -n "${!name:-}" ]; then vars+=(--var "$name:${!name}"); fi
done

cat <<MSG

Cloudbox is starting on http://127.0.0.1:$PORT; $runner_note.
$model_note

Mint a first API key with \$10 of dev credits, with the CLI (\`cargo install --path cli\`;
the dev admin key is kept in .dev.vars), then log in and try an agent task in a folder:

  export CLOUDBOX_URL=http://127.0.0.1:$PORT CLOUDBOX_ADMIN_KEY=$ADMIN_API_KEY
  cloudbox admin keys create me --credits 10
  cloudbox login            # paste the key it printed
  cloudbox exec "write hello.txt hi"

or with curl: curl -s -X POST http://127.0.0.1:$PORT/admin/keys \\
  -H 'authorization: Bearer $ADMIN_API_KEY' -H 'content-type: application/json' -d '{"name":"me"}'

MSG
CLOUDBOX_SKIP_BUILD=1 scripts/wrangler dev --local --ip 127.0.0.1 --port "$PORT" \
  --persist-to "$STATE" "${vars[@]}"
