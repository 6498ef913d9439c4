#!/usr/bin/env bash
# Prints the size of the runner image and fails above its budget.
#
# Budget: 1 GiB. What it holds (docker history, 898 MiB in all): Debian
# minbase (120 MiB) with git, curl, procps and certificates (195 MiB: git
# brings perl), Node 22 (176 MiB: users' builds need it, and it runs the
# Codex launcher), the pinned Codex CLI (403 MiB: a 281 MiB static binary,
# its 67 MiB code-mode host, ripgrep) and the runner (5 MiB). The budget
# leaves ~12 % for a Codex or Node upgrade; past it, something new was added
# and should be justified here.
set -euo pipefail
image=${1:-cloudbox-runner:local}
budget=$((1024 * 1024 * 1024))
size=$(docker image inspect --format '{{.Size}}' "$image")
printf 'image: %s %d MiB (budget %d MiB)\n' "$image" $((size / 1024 / 1024)) $((budget / 1024 / 1024))
if [ "$size" -gt "$budget" ]; then
  echo "image: over budget" >&2
  exit 1
fi
