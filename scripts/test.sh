#!/usr/bin/env bash
# scripts/test.sh — the whole test suite, exactly as CI runs it, on a fresh Debian machine as
# root: installs the Debian packages, checks formatting and lints, runs unit and namespace
# integration tests (against wireguard-go and wg), and smoke-runs every fuzz target.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[[ "$(id -u)" == 0 ]] || { echo "error: run as root (the tests create network namespaces)" >&2; exit 1; }

step() { printf '\n==> %s\n' "$*" >&2; }

step "installing Debian packages"
scripts/install-deps.sh

step "formatting"
cargo fmt --all --check

step "lints"
cargo clippy --workspace --all-targets --release -- -D warnings

step "build"
# The C ABI's tests link the shared and static libraries, which `cargo test` does not build.
cargo build --workspace --release

step "unit and integration tests"
cargo test --workspace --release

step "fuzz targets (smoke run)"
scripts/fuzz.sh "${FUZZ_SECONDS:-20}"

step "all tests passed"
