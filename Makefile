# The two commands of the README, and the pieces they are made of.
#   make demo   set up this machine and run the main job on the embedded defaults
#   make test   set up this machine and run every test
.PHONY: demo test setup build lint bench clean-demo

CARGO ?= cargo

setup:
	@./scripts/setup.sh

build: setup
	$(CARGO) build --workspace --bins

demo: setup
	@./scripts/demo.sh

test: setup
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The control-plane benchmark of docs/BENCHMARKS.md (about 2 minutes on 2 cores).
bench: setup
	$(CARGO) build --release -p surgery-e2e
	./target/release/control-plane-bench --workers 500 --clients 20 --seconds 60

clean-demo:
	rm -rf .demo
