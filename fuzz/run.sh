#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for a bounded time each.
#
#   bash fuzz/run.sh [seconds-per-target] [target...]
#
# Seconds per target: the first argument, else $FUZZ_SECONDS, else 30. The committed seeds
# (fuzz/seeds/<target>/) are copied into the working corpus (fuzz/corpus/<target>/, git-ignored)
# before each run, so the corpus keeps what earlier runs found. A crash, a panic, a timeout (5 s
# for one input) or running out of memory (2 GiB) is a finding: its input lands in
# fuzz/artifacts/<target>/ and the script exits non-zero after running every target.
# The targets run one after the other, one process each; FUZZ_CPU=<n> pins them to core n
# (`taskset -c n`). Each target's libFuzzer output is kept in fuzz/logs/<target>.log.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

seconds="${FUZZ_SECONDS:-30}"
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then
    seconds="$1"
    shift
fi

all_targets=(bearer jwt_parts jwt_verify route_choice config set_cookie introspection
    handle_cookie jwks discovery)
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${all_targets[@]}")

# The dictionary of each target.
dict_of() {
    case "$1" in
        bearer | jwt_verify) echo jwt ;;
        route_choice | set_cookie | handle_cookie) echo http ;;
        config) echo toml ;;
        *) echo json ;;
    esac
}

# Tools: a nightly toolchain and cargo-fuzz.
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: installing the nightly toolchain" >&2
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

pin=()
if [[ -n "${FUZZ_CPU:-}" ]]; then
    pin=(taskset -c "$FUZZ_CPU")
fi

echo "fuzz: building the targets" >&2
build_start=$SECONDS
cargo +nightly fuzz build --release >&2
echo "fuzz: built in $((SECONDS - build_start)) s" >&2
# The targets run from the binaries built above, not through `cargo fuzz run`, which would build
# again before each target: sources edited during a long run would change (or break) what the
# later targets fuzz.
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin_dir="target/$host/release"

mkdir -p logs
failed=()
for t in "${targets[@]}"; do
    corpus="corpus/$t"
    mkdir -p "$corpus" "artifacts/$t"
    cp -n "seeds/$t"/* "$corpus"/ 2>/dev/null || true
    log="logs/$t.log"
    before=$(find "artifacts/$t" -type f | wc -l)
    set +e
    "${pin[@]}" "$bin_dir/$t" "$corpus" -artifact_prefix="artifacts/$t/" \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=5 \
        -dict="dict/$(dict_of "$t").dict" -print_final_stats=1 >"$log" 2>&1
    status=$?
    set -e
    after=$(find "artifacts/$t" -type f | wc -l)
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1)
    findings=$((after - before))
    printf '%-14s %10s runs  %-22s %d finding(s)  exit %d\n' \
        "$t" "${runs:-?}" "${cov:-cov: ? ft: ?}" "$findings" "$status"
    if [[ $status -ne 0 || $findings -gt 0 ]]; then
        failed+=("$t")
        grep -m1 -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" >&2 || true
        echo "  log: fuzz/$log; input: fuzz/artifacts/$t/" >&2
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz: findings in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: no findings in ${#targets[@]} target(s), ${seconds} s each" >&2
