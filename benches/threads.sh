#!/usr/bin/env bash
# Threads: the release tollgate's public route with several threads, per-core
# (`server.scheduler = "per-core"`, the default) beside one work-stealing runtime, and one thread
# for reference, in front of nginx `return 200`, loaded by wrk. Prints tollgate's CPU time a
# request (user and system, from /proc/PID/stat) and its throughput, round by round: the modes
# alternate (per-core, work-stealing, work-stealing, per-core) so that a machine whose speed
# drifts weighs on both alike. A measurement to read side by side, not a test.
#
#   bash benches/threads.sh                       # 3 rounds, 2 threads, 8 s runs after 2 s
#   THREADS_ROUNDS=1 THREADS_SECONDS=4 bash benches/threads.sh
#   THREADS=4 THREADS_CPUS=0-3 THREADS_LOAD_CPUS=4-5 bash benches/threads.sh
#
# Pinning: tollgate on THREADS_CPUS (default all: 0-1 here), wrk and nginx on THREADS_LOAD_CPUS
# (default the last CPU). With two CPUs, tollgate's second thread shares its CPU with the load;
# both modes meet the same, and the one-thread row runs alone on CPU 0.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${THREADS_ROUNDS:-3}
SECONDS_RUN=${THREADS_SECONDS:-8}
THREADS=${THREADS:-2}
LAST=$(($(nproc) - 1))
CPUS=${THREADS_CPUS:-0-$LAST}
LOAD=${THREADS_LOAD_CPUS:-$LAST}
for tool in nginx wrk taskset curl; do
    command -v "$tool" >/dev/null || { echo "threads.sh: $tool is missing (apt-get install nginx wrk util-linux curl)" >&2; exit 1; }
done
cargo build --release --quiet --bin tollgate
# shellcheck source=common/shell.sh
source benches/common/shell.sh
upstream_nginx "$LOAD"

# measure LABEL CPUS THREADS SCHEDULER: one tollgate, warmed for 2 s, then one wrk run counted.
measure() {
    local label=$1 cpus=$2 threads=$3 scheduler=$4
    local gw admin
    gw=$(free_port); admin=$(free_port)
    cat > "$WORK/tollgate.toml" <<TOML
[server]
listen = "127.0.0.1:$gw"
admin_listen = "127.0.0.1:$admin"
threads = $threads
scheduler = "$scheduler"
watch_config = false

[log]
level = "warn"

[[upstream]]
id = "up"
url = "http://127.0.0.1:$UP"

[[route]]
id = "public"
prefix = "/public/"
upstream = "up"
auth = "none"
TOML
    taskset -c "$cpus" "$ROOT/target/release/tollgate" run --config "$WORK/tollgate.toml" 2>>"$WORK/tollgate.log" &
    local pid=$!
    PIDS+=($pid)
    for _ in $(seq 1 100); do
        curl -fsS "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    local url="http://127.0.0.1:$gw/public/x"
    taskset -c "$LOAD" wrk -t1 -c64 -d2s "$url" >/dev/null
    local u1 s1 u2 s2 out n
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    out=$(taskset -c "$LOAD" wrk -t1 -c64 -d"${SECONDS_RUN}s" "$url")
    read -r u2 s2 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    awk -v l="$label" -v u=$((u2 - u1)) -v s=$((s2 - s1)) -v n="$n" -v t="$(getconf CLK_TCK)" -v d="$SECONDS_RUN" \
        'BEGIN { printf "%-28s %9.0f req/s   CPU %6.2f us/req (user %5.2f, system %5.2f)\n", l, n/d, (u+s)/t*1e6/n, u/t*1e6/n, s/t*1e6/n }'
}

echo "tollgate $(git rev-parse --short HEAD), $(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p')), $(date -u +%FT%TZ)"
echo "tollgate on CPUs $CPUS with $THREADS threads; wrk -t1 -c64 and nginx on CPU $LOAD; ${SECONDS_RUN} s runs"
for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round"
    for scheduler in per-core work-stealing work-stealing per-core; do
        measure "$THREADS threads, $scheduler" "$CPUS" "$THREADS" "$scheduler" | tee -a "$WORK/runs"
    done
    measure "1 thread (CPU 0)" 0 1 per-core | tee -a "$WORK/runs"
done
echo "== medians"
python3 - "$WORK/runs" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    label, rest = line[:28].strip(), line[28:]
    rps, cpu = re.search(r"([\d.]+) req/s +CPU +([\d.]+)", rest).groups()
    runs.setdefault(label, []).append((float(rps), float(cpu)))
med = {k: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}
for k, (rps, cpu) in med.items():
    print(f"{k:28} {rps:9.0f} req/s   CPU {cpu:6.2f} us/req")
pc = [v for k, v in med.items() if k.endswith("per-core")]
ws = [v for k, v in med.items() if k.endswith("work-stealing")]
if pc and ws:
    print(f"per-core / work-stealing: CPU a request {pc[0][1] / ws[0][1]:.2f} x, req/s {pc[0][0] / ws[0][0]:.2f} x")
PY
