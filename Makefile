# The two commands of the README, and a few more.
.PHONY: dev test bench deploy setup build

dev:      ## run the full local stack on 127.0.0.1:8787
	bash scripts/dev.sh

test:     ## install what is missing, then run every check
	bash scripts/test.sh

setup:    ## install the toolchain pieces only
	bash scripts/setup.sh

build:    ## build the wasm Worker into build/
	bash scripts/setup.sh && bash scripts/build-worker.sh

bench:    ## benchmarks (see scripts/bench.sh)
	bash scripts/bench.sh

deploy:   ## build and deploy to Cloudflare (needs wrangler login, a D1 id, secrets)
	bash scripts/setup.sh && bash scripts/build-worker.sh && bash scripts/container-images.sh stage \
	  && CLOUDBOX_SKIP_BUILD=1 scripts/wrangler deploy
