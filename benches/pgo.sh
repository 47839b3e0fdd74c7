#!/usr/bin/env bash
# PGO: a profile-guided release build of tollgate, to measure against the plain release build.
# An experiment the project has measured (docs/performance.md, "Profile-guided optimisation,
# measured"), not how tollgate is built or shipped: `cargo build --release` and
# deploy/Dockerfile stay as they are.
#
#   bash benches/pgo.sh                   # writes target/pgo/use/release/tollgate
#   PEERS_TOLLGATE=target/pgo/use/release/tollgate cargo bench --bench peers
#
# Three steps, each in a target directory of its own under target/pgo (so the usual build's
# cache is left alone; about 5 minutes a build on two cores):
#   1. an instrumented build (`-Cprofile-generate`);
#   2. training: the peers bench's tollgate rows, one round of PGO_SECONDS (default 4) each,
#      run against the instrumented binary (the bench starts nginx, the JWKS and introspection
#      servers and the fake legacy API itself, and sends its bad tokens first, so the refusals
#      are trained too); each gateway process writes its counts when it exits on SIGTERM;
#   3. the counts merged by llvm-profdata (rustup's `llvm-tools` component, added if missing),
#      and the release build again with them (`-Cprofile-use`).
# The training rows are the rows the bench then measures: the gain it shows is for that
# traffic. RUSTFLAGS set by the caller is replaced for the two builds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
PGO=$TARGET/pgo
SECONDS_RUN=${PGO_SECONDS:-4}
# Every tollgate row of the peers bench.
ROWS=tollgate-public,tollgate-jwt-1,tollgate-jwt-10k,tollgate-jwt-10k-nocache
ROWS+=,tollgate-es256-nocache,tollgate-eddsa-nocache,tollgate-introspection
ROWS+=,tollgate-legacy,tollgate-sessions

HOST=$(rustc -vV | sed -n 's/^host: //p')
PROFDATA=$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata
if [ ! -x "$PROFDATA" ]; then
    echo "pgo.sh: adding rustup's llvm-tools component (for llvm-profdata)" >&2
    rustup component add llvm-tools
fi

rm -rf "$PGO/raw" "$PGO/training"
mkdir -p "$PGO/raw"
echo "pgo.sh: 1/3 the instrumented build" >&2
RUSTFLAGS="-Cprofile-generate=$PGO/raw/build" \
    cargo build --release --locked --bin tollgate --target-dir "$PGO/generate"

echo "pgo.sh: 2/3 training on the peers bench's tollgate rows, $SECONDS_RUN s each" >&2
# The build scripts of step 1 wrote counts of their own under raw/build; only the gateway's go
# to raw/training. The bench itself is built without RUSTFLAGS, in the usual target directory.
env -u RUSTFLAGS \
    LLVM_PROFILE_FILE="$PGO/raw/training/tollgate-%p-%m.profraw" \
    PEERS_ROWS=$ROWS PEERS_ROUNDS=1 PEERS_SECONDS="$SECONDS_RUN" \
    PEERS_TOLLGATE="$PGO/generate/release/tollgate" PEERS_OUT="$PGO/training" \
    cargo bench --bench peers
shopt -s nullglob
counts=("$PGO"/raw/training/*.profraw)
if [ ${#counts[@]} -eq 0 ]; then
    echo "pgo.sh: training left no counts in $PGO/raw/training" \
        "(did the gateway exit on SIGTERM?)" >&2
    exit 1
fi
"$PROFDATA" merge -o "$PGO/tollgate.profdata" "${counts[@]}"

echo "pgo.sh: 3/3 the build with the profile (${#counts[@]} gateway runs merged)" >&2
RUSTFLAGS="-Cprofile-use=$PGO/tollgate.profdata" \
    cargo build --release --locked --bin tollgate --target-dir "$PGO/use"
echo "pgo.sh: $PGO/use/release/tollgate" >&2
