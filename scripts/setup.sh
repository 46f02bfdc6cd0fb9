#!/usr/bin/env bash
# Sets up a fresh machine for building and testing surgery: checks the tools, installs
# LibTorch 2.11.0 inside the repo (.libtorch/, see GPU.md), and says what it did.
# Idempotent and quick when everything is already there.
set -euo pipefail
root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: 'cargo' is missing; install Rust 1.95 or newer (https://rustup.rs)" >&2
    exit 2
fi
rust_version="$(rustc --version | awk '{print $2}')"
if [ "$(printf '%s\n1.95.0\n' "$rust_version" | sort -V | head -n1)" != "1.95.0" ]; then
    echo "setup: Rust $rust_version is too old; surgery needs 1.95 or newer (rustup update)" >&2
    exit 2
fi
libtorch="$("$root_dir/scripts/setup-libtorch.sh")"
echo "setup: LibTorch 2.11.0 at $libtorch" >&2
