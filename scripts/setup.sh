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

# A real S3-compatible server for the S3 tests (tests/tests/s3_*.rs): s3s-fs from
# crates.io, built once into .tools/ (about three minutes on two cores).
s3s_version=0.14.1
s3s_bin="$root_dir/.tools/bin/s3s-fs"
if [ ! -x "$s3s_bin" ] || [ "$("$s3s_bin" --version 2>/dev/null | awk '{print $2}')" != "$s3s_version" ]; then
    echo "setup: building s3s-fs $s3s_version (the S3 server the tests run) into .tools/" >&2
    cargo install --quiet --locked s3s-fs --version "$s3s_version" --features binary --root "$root_dir/.tools" >&2
fi
echo "setup: s3s-fs $s3s_version at $s3s_bin" >&2
