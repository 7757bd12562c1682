#!/usr/bin/env bash
# Fuzzes the input reader (not run in CI). Usage: fuzz/run.sh [SECONDS]   (default 300)
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p corpus/read_input
# Seed the corpus with the project's sample and, when present, the real payloads in ../shared.
cp ../samples/*.json corpus/read_input/ 2>/dev/null || true
cp ../../shared/github/examples/*.json corpus/read_input/ 2>/dev/null || true
RUSTC_BOOTSTRAP=1 cargo fuzz run read_input corpus/read_input -- -max_total_time="${1:-300}" -max_len=65536
