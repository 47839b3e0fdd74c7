# Sourced by the shell benches (h2load.sh, threads.sh): a scratch folder removed at exit with
# every process started into PIDS, free ports, and nginx `return 200` as the upstream.
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# upstream_nginx CPUS: one nginx worker pinned to CPUS answering `{"ok":true}` to everything on
# a free port, which it puts in UP.
upstream_nginx() {
    UP=$(free_port)
    cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/error.log error;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$UP; location / { return 200 '{"ok":true}'; } }
}
NGINX
    taskset -c "$1" nginx -p "$WORK" -c "$WORK/nginx.conf" &
    PIDS+=($!)
}
