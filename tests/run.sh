#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what the tests need, then runs the
# format and lint gates and every test. `.ci/run` calls exactly this.
#
#   bash tests/run.sh
#
# Installs (only when missing): promtool (Debian package prometheus), redis-server and
# redis-sentinel, Node.js and npm, and the interop harness's npm packages (tests/interop, from its
# lock file: the issuer oauth2-mock-server and the client library oauth4webapi); fuzz/run.sh
# installs a nightly toolchain and cargo-fuzz.
#
# After the tests: every fuzz target for FUZZ_SECONDS (default 20) and the soak for
# SOAK_SECONDS (default 60) in release mode; docs/testing.md gives the longer runs.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || need_apt+=(redis-sentinel)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# libFuzzer (fuzz/) is C++.
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)
if ! command -v python3 >/dev/null 2>&1; then need_apt+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip, venv' 2>/dev/null; then need_apt+=(python3-venv); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

echo "== npm ci (tests/interop: oauth2-mock-server, oauth4webapi)"
npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error

echo "== cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path benches/floor/Cargo.toml -- --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
# benches/floor, the peers bench's forwarding floor, is a package of its own.
cargo clippy --manifest-path benches/floor/Cargo.toml --locked --quiet -- -D warnings

echo "== cargo doc --no-deps (warnings are errors: a link to a private item, a broken link)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet

echo "== cargo test"
cargo test

echo "== deploy/ (promtool, kubernetes-validate, compose, dashboard, metric names)"
bash tests/deploy-check.sh

echo "== fuzz/run.sh (every target, ${FUZZ_SECONDS:-20} s each)"
bash fuzz/run.sh "${FUZZ_SECONDS:-20}"

echo "== soak (${SOAK_SECONDS:-60} s, release build)"
bash tests/soak.sh "${SOAK_SECONDS:-60}"
