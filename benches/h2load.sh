#!/usr/bin/env bash
# HTTP/2 load check: the release tollgate (h2c, prior knowledge) in front of nginx `return 200`,
# driven by h2load (Debian nghttp2-client): a well-behaved run, then one that asks for ten times
# more streams per connection than http2_max_concurrent_streams (h2load holds to the server's
# SETTINGS, as a client must; the abuse that does not is tested in tests/it/h2_abuse.rs), then a
# well-behaved run again. The gateway must keep serving, and its RSS is printed after each run.
# A load check, not a measurement: the peers bench has the figures.
#
#   bash benches/h2load.sh            # 200,000 requests per run
#   H2LOAD_REQUESTS=50000 bash benches/h2load.sh
#
# Pinned like the other benches: tollgate on CPU 0, nginx and h2load on CPU 1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REQUESTS=${H2LOAD_REQUESTS:-200000}
for tool in nginx h2load taskset; do
    command -v "$tool" >/dev/null || { echo "h2load.sh: $tool is missing (apt-get install nginx nghttp2-client util-linux)" >&2; exit 1; }
done
cargo build --release --quiet
# shellcheck source=common/shell.sh
source benches/common/shell.sh
upstream_nginx 1
GW=$(free_port); ADMIN=$(free_port)

cat > "$WORK/tollgate.toml" <<TOML
[server]
listen = "127.0.0.1:$GW"
admin_listen = "127.0.0.1:$ADMIN"
http2_cleartext = true
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
taskset -c 0 "$ROOT/target/release/tollgate" run --config "$WORK/tollgate.toml" 2>"$WORK/tollgate.log" &
GW_PID=$!
PIDS+=($GW_PID)
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done

rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$GW_PID/status"; }
run() {
    local what=$1; shift
    echo "== $what"
    taskset -c 1 h2load "$@" "http://127.0.0.1:$GW/public/x" 2>&1 \
        | grep -E '^(finished in|requests:|status codes:|traffic:)' || true
    echo "   tollgate RSS: $(rss)"
}
run "well-behaved: 16 connections, 32 streams each" -n "$REQUESTS" -c 16 -m 32
run "greedy: 16 connections asking for 1000 streams each (SETTINGS allow 100)" -n "$REQUESTS" -c 16 -m 1000
run "well-behaved again" -n "$REQUESTS" -c 16 -m 32
kill -0 "$GW_PID" && echo "tollgate is still serving (pid $GW_PID)"
