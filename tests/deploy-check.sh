#!/usr/bin/env bash
# Checks everything under deploy/ without a container engine or a cluster:
#
#   bash tests/deploy-check.sh          (from anywhere; it runs from the repository root)
#
# - Prometheus: `promtool check config`, `promtool check rules`, `promtool test rules` (promtool
#   comes from Debian's `prometheus` package and must be installed), and that every alert has
#   both a firing and a non-firing unit test.
# - Kubernetes: every manifest against the Kubernetes OpenAPI schemas with kubernetes-validate
#   (PyPI) in --strict mode (unknown fields are errors), for two Kubernetes versions. Kinds it has
#   no schema for are reported as WARN and skipped (its behaviour for unknown kinds; it has no
#   flag for that): the only ones allowed are the ServiceMonitor and PrometheusRule CRDs. That
#   prometheusrule.yaml and grafana-dashboard-configmap.yaml are what deploy/kubernetes/generate.py
#   makes of alerts.yml and the dashboard. Then cross-references
#   (selectors, port names, ConfigMap and Secret names, probes, security settings), the
#   kustomization's resource list, `kubectl kustomize` when kubectl is installed, and
#   `tollgate check` on the ConfigMap's tollgate.toml with stand-in secret files.
# - docker-compose.yml: parses as YAML, has the services tollgate, prometheus and grafana, the
#   files it mounts exist, and it passes the compose-spec parser (PyPI compose-spec, bindings of
#   the Rust compose_spec crate, which rejects unknown keys and wrong types).
# - Grafana: the dashboard is valid JSON, every panel query parses as PromQL (promtool, with the
#   Grafana variables substituted), and the provisioning files agree with the dashboard and the
#   compose file.
# - systemd: `systemd-analyze verify` (when systemd-analyze is installed) and the hardening keys.
# - Dockerfile: static checks (stages, user, ports, entrypoint; every COPY source exists). A real
#   `docker build` needs a Docker engine, which this check does not assume.
# - Metric names: starts `tollgate demo` on 127.0.0.1 (binary: $TOLLGATE_BIN, default
#   target/debug/tollgate), sends a little traffic, scrapes /metrics and checks that every metric
#   name in alerts.yml and in the dashboard is exposed, with the label names used on it.
#   Families that have no series in the demo are left out of the exposition by the prometheus
#   crate; the demo has no introspection issuer, so the tollgate_introspection_* names are
#   checked against the constants in src/metrics.rs instead (and the script says so).
#
# The Python tools go into a virtual environment, target/deploy-venv (override: DEPLOY_VENV).
# All network traffic goes to 127.0.0.1, except pip's first install from PyPI.
# The last line is `deploy-check: N passed, M failed`; the exit status is non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TOLLGATE_BIN=${TOLLGATE_BIN:-$ROOT/target/debug/tollgate}
VENV=${DEPLOY_VENV:-$ROOT/target/deploy-venv}
K8S_VERSIONS=(1.30.0 1.37.0)
# Pinned Python tools: the venv is (re)installed when this list changes.
PY_REQS=(kubernetes-validate==1.37.0 PyYAML==6.0.3 compose-spec==0.2.1)

PASSED=0
FAILED=0
WORK=$(mktemp -d)
DEMO_PID=""

cleanup() {
  if [ -n "$DEMO_PID" ] && kill -0 "$DEMO_PID" 2>/dev/null; then
    kill "$DEMO_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$DEMO_PID" 2>/dev/null || break
      sleep 0.2
    done
    kill -9 "$DEMO_PID" 2>/dev/null || true
    wait "$DEMO_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

pass() { PASSED=$((PASSED + 1)); echo "ok   $1"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $1"; }
note() { echo "     $1"; }

# check NAME COMMAND...: runs the command, counts it, shows its output (indented) on failure.
check() {
  local name=$1
  shift
  local out
  if out=$("$@" 2>&1); then
    pass "$name"
  else
    fail "$name"
    printf '%s\n' "$out" | sed 's/^/       /'
  fi
}

# check_show NAME COMMAND...: as check, but shows the command's output in both cases.
check_show() {
  local name=$1
  shift
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  if [ "$rc" -eq 0 ]; then pass "$name"; else fail "$name"; fi
  printf '%s\n' "$out" | sed 's/^/       /'
}

finish() {
  echo "deploy-check: $PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}

# ------------------------------------------------------------------------------ Prometheus
echo "== Prometheus (deploy/prometheus)"
if command -v promtool >/dev/null 2>&1; then
  note "$(promtool --version 2>&1 | head -n 1)"
  check "promtool check config deploy/prometheus/prometheus.yml" \
    promtool check config deploy/prometheus/prometheus.yml
  check "promtool check rules deploy/prometheus/alerts.yml" \
    promtool check rules deploy/prometheus/alerts.yml
  check "promtool test rules deploy/prometheus/alerts_test.yml" \
    promtool test rules deploy/prometheus/alerts_test.yml
else
  fail "promtool not found: install Debian's prometheus package (apt-get install prometheus)"
fi

# ------------------------------------------------------------------------------ Python tools
echo "== Python tools ($VENV)"
want="${PY_REQS[*]}"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.deploy-check-reqs" 2>/dev/null)" != "$want" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_REQS[@]}"
  echo "$want" > "$VENV/.deploy-check-reqs"
fi
PY=$VENV/bin/python
note "kubernetes-validate $("$VENV/bin/kubernetes-validate" --version 2>&1 | tail -n 1), PyYAML $("$PY" -c 'import yaml; print(yaml.__version__)'), compose-spec 0.2.1"

# Alert test coverage: every alert has a test where it fires and one where it must not.
check "every alert in alerts.yml has a firing and a non-firing unit test" "$PY" - <<'PY'
import sys, yaml
rules = yaml.safe_load(open("deploy/prometheus/alerts.yml"))
tests = yaml.safe_load(open("deploy/prometheus/alerts_test.yml"))
alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
firing, silent, unknown = set(), set(), set()
for t in tests["tests"]:
    for a in t.get("alert_rule_test", []):
        name = a["alertname"]
        if name not in alerts:
            unknown.add(name)
        (firing if a.get("exp_alerts") else silent).add(name)
problems = [f"{a}: no test where it fires" for a in sorted(alerts - firing)]
problems += [f"{a}: no test where it stays silent" for a in sorted(alerts - silent)]
problems += [f"{a}: tested but not defined in alerts.yml" for a in sorted(unknown)]
print("\n".join(problems) or f"{len(alerts)} alerts covered")
sys.exit(1 if problems else 0)
PY

# ------------------------------------------------------------------------------ Kubernetes
echo "== Kubernetes (deploy/kubernetes)"
manifests=()
for f in deploy/kubernetes/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
for v in "${K8S_VERSIONS[@]}"; do
  out=$("$VENV/bin/kubernetes-validate" --strict -k "$v" "${manifests[@]}" 2>&1) && rc=0 || rc=$?
  # Unknown kinds come out as WARN (no schema) and are skipped: only the ServiceMonitor CRD may.
  unexpected_warn=$(printf '%s\n' "$out" | grep '^WARN' | grep -v -E 'kind (ServiceMonitor|PrometheusRule) with api version monitoring.coreos.com/v1' || true)
  if [ "$rc" -eq 0 ] && [ -z "$unexpected_warn" ] && ! printf '%s\n' "$out" | grep -q '^ERROR'; then
    pass "kubernetes-validate --strict -k $v: ${#manifests[@]} files ($(printf '%s\n' "$out" | grep -c '^INFO') resources valid)"
    note "skipped, no schema (a CRD): $(printf '%s\n' "$out" | grep '^WARN' | sed -E 's/^WARN ([^ ]+) .*kind ([A-Za-z]+).*/\2 in \1/' | paste -sd, -)"
  else
    fail "kubernetes-validate --strict -k $v"
    printf '%s\n' "$out" | grep -v '^INFO' | sed 's/^/       /'
  fi
done

check "prometheusrule.yaml and grafana-dashboard-configmap.yaml are generated from alerts.yml and the dashboard" \
  "$PY" deploy/kubernetes/generate.py --check

check "manifests agree with each other (selectors, ports, names, probes, security)" "$PY" - <<'PY'
import glob, os, sys, yaml
docs = {}
for path in sorted(glob.glob("deploy/kubernetes/*.yaml")):
    for d in yaml.safe_load_all(open(path)):
        if d:
            docs.setdefault(d["kind"], []).append((os.path.basename(path), d))
p = []
def one(kind, name):
    for _, d in docs.get(kind, []):
        if d["metadata"]["name"] == name:
            return d
    p.append(f"missing {kind}/{name}")
    return {}
def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())

# kustomization: lists every manifest except the example Secret, and nothing that is missing
kust = yaml.safe_load(open("deploy/kubernetes/kustomization.yaml"))
listed = set(kust.get("resources", []))
files = {os.path.basename(f) for f in glob.glob("deploy/kubernetes/*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
for f in sorted(files - listed): p.append(f"kustomization.yaml does not list {f}")
for f in sorted(listed - files): p.append(f"kustomization.yaml lists {f}, which does not exist")
if "secret.example.yaml" in listed: p.append("secret.example.yaml must not be applied (placeholder values)")
if "namespace" in kust: p.append("the manifests are namespace-less: no namespace in kustomization.yaml")
for kind, items in docs.items():
    for f, d in items:
        if "namespace" in d.get("metadata", {}): p.append(f"{f}: {kind} sets a namespace")

dep = one("Deployment", "tollgate")
spec = dep.get("spec", {})
pod = spec.get("template", {}).get("spec", {})
pod_labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
if spec.get("replicas") != 3: p.append("Deployment: replicas must be 3")
if not matches(spec.get("selector", {}).get("matchLabels", {}), pod_labels): p.append("Deployment: selector does not match the pod labels")
if pod.get("enableServiceLinks") is not False: p.append("Deployment: enableServiceLinks must be false")
psc = pod.get("securityContext", {})
if psc.get("runAsNonRoot") is not True: p.append("Deployment: pod runAsNonRoot")
if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault": p.append("Deployment: pod seccompProfile RuntimeDefault")
if pod.get("terminationGracePeriodSeconds", 30) <= 30: p.append("Deployment: terminationGracePeriodSeconds must exceed shutdown_grace (30 s)")
c = (pod.get("containers") or [{}])[0]
csc = c.get("securityContext", {})
for key, want in [("runAsNonRoot", True), ("readOnlyRootFilesystem", True), ("allowPrivilegeEscalation", False)]:
    if csc.get(key) is not want: p.append(f"Deployment: container {key} must be {want}")
if csc.get("capabilities", {}).get("drop") != ["ALL"]: p.append("Deployment: capabilities drop ALL")
if csc.get("seccompProfile", {}).get("type") != "RuntimeDefault": p.append("Deployment: container seccompProfile RuntimeDefault")
ports = {pt["name"]: pt["containerPort"] for pt in c.get("ports", [])}
if ports != {"http": 8080, "admin": 9090}: p.append(f"Deployment: ports must be http 8080 and admin 9090, got {ports}")
for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
    g = c.get(probe, {}).get("httpGet", {})
    if g.get("path") != path or g.get("port") not in ("admin", 9090): p.append(f"Deployment: {probe} must be GET {path} on the admin port")
env = {e["name"]: e.get("value") for e in c.get("env", [])}
if env.get("TOLLGATE__LOG__FORMAT") != "json": p.append("Deployment: env TOLLGATE__LOG__FORMAT=json")
for k in env:
    if k.startswith("TOLLGATE_") and not k.startswith("TOLLGATE__"): p.append(f"Deployment: {k} is not a TOLLGATE__ override")
res = c.get("resources", {})
if not res.get("requests", {}).get("cpu") or not res.get("limits", {}).get("memory"): p.append("Deployment: resources requests and limits")
vols = {v["name"]: v for v in pod.get("volumes", [])}
mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
cm_vol = vols.get(mounts.get("/etc/tollgate"), {})
sec_vol = vols.get(mounts.get("/etc/tollgate/secrets"), {})
cm_name = cm_vol.get("configMap", {}).get("name")
if not cm_name: p.append("Deployment: a ConfigMap must be mounted at /etc/tollgate")
elif "tollgate.toml" not in one("ConfigMap", cm_name).get("data", {}): p.append(f"ConfigMap {cm_name}: no tollgate.toml key")
if sec_vol.get("secret", {}).get("secretName") != "tollgate-secrets": p.append("Deployment: Secret tollgate-secrets must be mounted at /etc/tollgate/secrets")
args = c.get("args") or c.get("command") or []
if "/etc/tollgate/tollgate.toml" not in args: p.append("Deployment: args must name /etc/tollgate/tollgate.toml")

svc = one("Service", "tollgate")
svc_ports = {pt["name"]: pt for pt in svc.get("spec", {}).get("ports", [])}
if {n: pt["port"] for n, pt in svc_ports.items()} != {"http": 8080, "admin": 9090}: p.append("Service: ports must be http 8080 and admin 9090")
for n, pt in svc_ports.items():
    if pt.get("targetPort") not in (n, ports.get(n)): p.append(f"Service: port {n} targets {pt.get('targetPort')}, not a container port")
if not matches(svc.get("spec", {}).get("selector", {}), pod_labels): p.append("Service: selector does not match the tollgate pods")

sm = one("ServiceMonitor", "tollgate")
if not matches(sm.get("spec", {}).get("selector", {}).get("matchLabels", {}), svc.get("metadata", {}).get("labels", {})): p.append("ServiceMonitor: selector does not match the Service's labels")
eps = sm.get("spec", {}).get("endpoints", [])
if not eps or any(e.get("port") not in svc_ports or e.get("path") != "/metrics" for e in eps): p.append("ServiceMonitor: endpoints must use a Service port name (admin) and /metrics")
if eps and eps[0].get("port") != "admin": p.append("ServiceMonitor: must scrape the admin port")

# The admin port: its token comes from the Secret, and only the scraper may reach it.
cm_toml = one("ConfigMap", cm_name or "tollgate-config").get("data", {}).get("tollgate.toml", "")
if 'admin_token_file = "secrets/admin-token"' not in cm_toml: p.append("ConfigMap: [server] admin_token_file must be secrets/admin-token (from the Secret)")
ex = yaml.safe_load(open("deploy/kubernetes/secret.example.yaml"))
if "admin-token" not in ex.get("stringData", {}): p.append("secret.example.yaml: no admin-token key")
np = one("NetworkPolicy", "tollgate").get("spec", {})
if not matches(np.get("podSelector", {}).get("matchLabels", {}), pod_labels): p.append("NetworkPolicy: podSelector does not match the tollgate pods")
if "Ingress" not in np.get("policyTypes", []): p.append("NetworkPolicy: must govern Ingress")
for rule in np.get("ingress", []):
    rule_ports = {pt.get("port") for pt in rule.get("ports", [])}
    if rule_ports & {"admin", 9090} and not rule.get("from"): p.append("NetworkPolicy: the admin port is open to every source")
    if rule_ports & {"admin", 9090} and rule_ports & {"http", 8080}: p.append("NetworkPolicy: the admin port shares a rule with the proxy port")
if not any({pt.get("port") for pt in r.get("ports", [])} & {"admin", 9090} for r in np.get("ingress", [])): p.append("NetworkPolicy: no rule admits the scraper to the admin port")
if not any({pt.get("port") for pt in r.get("ports", [])} & {"http", 8080} for r in np.get("ingress", [])): p.append("NetworkPolicy: no rule admits clients to the proxy port")

pdb = one("PodDisruptionBudget", "tollgate")
if pdb.get("spec", {}).get("minAvailable") != 2: p.append("PodDisruptionBudget: minAvailable 2")
if not matches(pdb.get("spec", {}).get("selector", {}).get("matchLabels", {}), pod_labels): p.append("PodDisruptionBudget: selector does not match the tollgate pods")

hpa = one("HorizontalPodAutoscaler", "tollgate").get("spec", {})
tgt = hpa.get("scaleTargetRef", {})
if (tgt.get("kind"), tgt.get("name")) != ("Deployment", "tollgate"): p.append("HPA: must target Deployment tollgate")
if (hpa.get("minReplicas"), hpa.get("maxReplicas")) != (3, 10): p.append("HPA: min 3, max 10")
cpu = [m for m in hpa.get("metrics", []) if m.get("resource", {}).get("name") == "cpu"]
if not cpu or cpu[0]["resource"]["target"].get("averageUtilization") != 70: p.append("HPA: CPU at 70 %")

pre_stop = c.get("lifecycle", {}).get("preStop", {})
if pre_stop.get("sleep", {}).get("seconds", 0) < 1 or "exec" in pre_stop: p.append("Deployment: preStop must be Kubernetes' sleep action (no shell in the image)")

rdep = one("Deployment", "tollgate-redis").get("spec", {})
rvols = rdep.get("template", {}).get("spec", {}).get("volumes", [])
claim = next((v.get("persistentVolumeClaim", {}).get("claimName") for v in rvols if v.get("name") == "data"), None)
if claim != "tollgate-redis-data": p.append("Redis Deployment: its data volume must be the PersistentVolumeClaim tollgate-redis-data")
elif not one("PersistentVolumeClaim", claim): p.append(f"PersistentVolumeClaim {claim} is missing")
if rdep.get("strategy", {}).get("type") != "Recreate": p.append("Redis Deployment: strategy Recreate (a ReadWriteOnce volume)")
rsvc = one("Service", "tollgate-redis").get("spec", {})
if not matches(rsvc.get("selector", {}), rdep.get("template", {}).get("metadata", {}).get("labels", {})): p.append("Service tollgate-redis: selector does not match the Redis pods")
if rdep.get("template", {}).get("spec", {}).get("enableServiceLinks") is not False: p.append("Redis Deployment: enableServiceLinks must be false")
if matches(svc.get("spec", {}).get("selector", {}), rdep.get("template", {}).get("metadata", {}).get("labels", {})): p.append("Service tollgate would also select the Redis pods")

print("\n".join(p) or "all cross-references hold")
sys.exit(1 if p else 0)
PY

if command -v kubectl >/dev/null 2>&1; then
  check "kubectl kustomize deploy/kubernetes renders" kubectl kustomize deploy/kubernetes
else
  note "skipped: kubectl kustomize (kubectl not installed); the resource list was checked above"
fi

# The ConfigMap's tollgate.toml, loaded by tollgate itself, with stand-in secret files.
mkdir -p "$WORK/etc/secrets"
"$PY" - "$WORK/etc/tollgate.toml" <<'PY'
import sys, yaml
cm = yaml.safe_load(open("deploy/kubernetes/configmap.yaml"))
open(sys.argv[1], "w").write(cm["data"]["tollgate.toml"])
PY
printf 'stand-in-client-secret\n' > "$WORK/etc/secrets/introspection-client-secret"
printf 'stand-in-password\n' > "$WORK/etc/secrets/erp-password"
printf '%064d\n' 0 > "$WORK/etc/secrets/handle.key"
printf 'stand-in-admin-token-0123456789\n' > "$WORK/etc/secrets/admin-token"
if [ -x "$TOLLGATE_BIN" ]; then
  check "tollgate check: the ConfigMap's tollgate.toml (secrets/… resolve next to it)" \
    "$TOLLGATE_BIN" check --config "$WORK/etc/tollgate.toml"
else
  fail "tollgate binary not found at $TOLLGATE_BIN (build it, or set TOLLGATE_BIN)"
fi

# ------------------------------------------------------------------------------ docker compose
echo "== docker-compose.yml"
check "docker-compose.yml parses and has tollgate, prometheus, grafana; mounted files exist" "$PY" - <<'PY'
import os, sys, yaml
d = yaml.safe_load(open("deploy/docker-compose.yml"))
svcs = d.get("services", {})
p = [f"no service {s}" for s in ("tollgate", "prometheus", "grafana") if s not in svcs]
t = svcs.get("tollgate", {})
b = t.get("build", {})
if not os.path.isfile(os.path.join("deploy", b.get("context", "."), b.get("dockerfile", "Dockerfile"))):
    p.append("tollgate: build.dockerfile does not exist relative to build.context")
cmd = t.get("command", [])
if not cmd or cmd[0] != "demo": p.append("tollgate: command must run the demo")
for name, s in svcs.items():
    for v in s.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("."):
            if not os.path.exists(os.path.join("deploy", src)): p.append(f"{name}: mounts {src}, which does not exist")
print("\n".join(p) or f"services: {', '.join(svcs)}")
sys.exit(1 if p else 0)
PY
check "docker-compose.yml passes the compose-spec parser (strict)" "$PY" - <<'PY'
from compose_spec import PyCompose
c = PyCompose.from_yaml(open("deploy/docker-compose.yml").read())
print(c.service_names())
PY

# ------------------------------------------------------------------------------ Grafana
echo "== Grafana (deploy/grafana)"
check "dashboard JSON, provisioning and compose mounts agree" "$PY" - <<'PY'
import json, sys, yaml
p = []
dash = json.load(open("deploy/grafana/dashboards/tollgate.json"))
panels = [x for x in dash.get("panels", []) if x.get("type") != "row"]
if not dash.get("uid") or not dash.get("title"): p.append("dashboard: uid and title")
ids = [x.get("id") for x in dash["panels"]]
if len(ids) != len(set(ids)): p.append("dashboard: panel ids are not unique")
for x in panels:
    if not x.get("targets") or not all(t.get("expr") for t in x["targets"]): p.append(f"panel {x.get('title')}: no query")
ds = yaml.safe_load(open("deploy/grafana/provisioning/datasources/prometheus.yml"))["datasources"]
uids = {d["uid"] for d in ds if d["type"] == "prometheus"}
var = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
if not var or var[0]["current"]["value"] not in uids: p.append("dashboard: the datasource variable's default is not the provisioned uid")
prov = yaml.safe_load(open("deploy/grafana/provisioning/dashboards/tollgate.yml"))["providers"][0]["options"]["path"]
compose = yaml.safe_load(open("deploy/docker-compose.yml"))["services"]["grafana"]["volumes"]
if not any(v.startswith("./grafana/dashboards:" + prov) for v in compose): p.append(f"compose does not mount the dashboards at {prov}")
if not any(v.startswith("./grafana/provisioning:/etc/grafana/provisioning") for v in compose): p.append("compose does not mount the provisioning folder")
print("\n".join(p) or f"{len(panels)} panels")
sys.exit(1 if p else 0)
PY

if command -v promtool >/dev/null 2>&1; then
  # Every panel query, with Grafana's variables replaced, as a recording rule: promtool parses it.
  "$PY" - "$WORK/dashboard-rules.yml" <<'PY'
import json, re, sys, yaml
dash = json.load(open("deploy/grafana/dashboards/tollgate.json"))
subs = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "${datasource}": "x"}
rules = []
for x in dash["panels"]:
    for t in x.get("targets", []):
        e = t["expr"]
        for k, v in subs.items():
            e = e.replace(k, v)
        e = re.sub(r"\$\{?(\w+)\}?", ".*", e)   # $job, $instance: regex matchers
        rules.append({"record": f"dashboard:panel_{x['id']}_{t['refId']}", "expr": e})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[1], "w"))
PY
  check "every dashboard query parses as PromQL (promtool check rules)" promtool check rules "$WORK/dashboard-rules.yml"
fi

# ------------------------------------------------------------------------------ licence
echo "== LICENSE"
check "LICENSE is the Apache License 2.0 that Cargo.toml names" "$PY" - <<'PY'
import re, sys
text = open("LICENSE").read()
cargo = open("Cargo.toml").read()
p = []
if not re.search(r'^license = "Apache-2.0"$', cargo, re.M): p.append("Cargo.toml: license is not Apache-2.0")
if "Apache License" not in text or "Version 2.0, January 2004" not in text: p.append("LICENSE is not the Apache License 2.0")
if "END OF TERMS AND CONDITIONS" not in text: p.append("LICENSE is cut short")
print("\n".join(p) or "ok")
sys.exit(1 if p else 0)
PY

# ------------------------------------------------------------------------------ systemd
echo "== systemd (deploy/systemd)"
check "tollgate.service has the required hardening and stop timeout" "$PY" - <<'PY'
import re, sys
unit = open("deploy/systemd/tollgate.service").read()
keys = {}
for line in unit.splitlines():
    m = re.match(r"^([A-Za-z]+)=(.*)$", line)
    if m:
        keys.setdefault(m.group(1), []).append(m.group(2).strip())
p = []
need = {"ProtectSystem": "strict", "NoNewPrivileges": "yes", "CapabilityBoundingSet": "",
        "Restart": "on-failure",
        "ExecStart": "/usr/local/bin/tollgate run --config /etc/tollgate/tollgate.toml",
        "ExecReload": "/bin/kill -HUP $MAINPID"}
for k, v in need.items():
    if v not in keys.get(k, []): p.append(f"{k}={v} missing")
if not (keys.get("User") or keys.get("DynamicUser") == ["yes"]): p.append("no User= or DynamicUser=yes")
stop = keys.get("TimeoutStopSec", ["0"])[-1]
m = re.fullmatch(r"(\d+)s?", stop)
if not m or int(m.group(1)) <= 30: p.append(f"TimeoutStopSec={stop} must exceed shutdown_grace (30s)")
print("\n".join(p) or "ok")
sys.exit(1 if p else 0)
PY
if command -v systemd-analyze >/dev/null 2>&1 && [ -x "$TOLLGATE_BIN" ]; then
  # verify needs the ExecStart binaries to exist: point them at the binary under test.
  mkdir -p "$WORK/systemd"
  sed "s#/usr/local/bin/tollgate#$TOLLGATE_BIN#g" deploy/systemd/tollgate.service > "$WORK/systemd/tollgate.service"
  verify_unit() {
    local out
    out=$(systemd-analyze verify "$WORK/systemd/tollgate.service" 2>&1) || { echo "$out"; return 1; }
    # Unknown keys are only warnings (exit 0): any output at all is a failure.
    [ -z "$out" ] || { echo "$out"; return 1; }
  }
  check "systemd-analyze verify deploy/systemd/tollgate.service (no warnings)" verify_unit
else
  note "skipped: systemd-analyze verify (systemd-analyze or the tollgate binary not available)"
fi

# ------------------------------------------------------------------------------ Dockerfile
echo "== Dockerfile (static; building needs a Docker engine)"
check "deploy/Dockerfile: stages, user, ports, entrypoint, COPY sources" "$PY" - <<'PY'
import os, re, sys
df = open("deploy/Dockerfile").read()
lines = [l for l in df.splitlines() if l.strip() and not l.lstrip().startswith("#")]
p = []
froms = [l.split()[1] for l in lines if l.startswith("FROM ")]
if froms[:1] != ["rust:1-bookworm"] or not (froms[-1:] and froms[-1].startswith("gcr.io/distroless/cc-debian12:nonroot")): p.append(f"stages: {froms} (the runtime must be distroless cc, nonroot)")
for want in ['USER nonroot:nonroot', 'EXPOSE 8080 9090', 'ENTRYPOINT ["/usr/local/bin/tollgate"]',
             'CMD ["run", "--config", "/etc/tollgate/tollgate.toml"]',
             'COPY --from=builder /build/target/release/tollgate /usr/local/bin/tollgate']:
    if want not in lines: p.append(f"missing: {want}")
if "HEALTHCHECK" in "\n".join(lines): p.append("HEALTHCHECK present, but the image has no client to run it")
runtime = df[df.index("############################## runtime"):]
if re.search(r"^RUN ", runtime, re.M): p.append("the runtime stage runs nothing (distroless has no shell)")
for label in ("title", "description", "licenses", "version", "revision", "base.name"):
    if f"org.opencontainers.image.{label}=" not in df: p.append(f"OCI label org.opencontainers.image.{label} missing")
if "sha256:" not in df and "imagetools inspect" not in df: p.append("say how to pin the base image by digest")
for l in lines:
    if l.startswith("COPY ") and "--from=" not in l:
        for src in l.split()[1:-1]:
            if not os.path.exists(src): p.append(f"COPY source {src} does not exist")
ignore = open("deploy/Dockerfile.dockerignore").read().split()
for keep in ("!Cargo.toml", "!Cargo.lock", "!build.rs", "!src/"):
    if keep not in ignore: p.append(f"Dockerfile.dockerignore must keep {keep}")
print("\n".join(p) or "ok")
sys.exit(1 if p else 0)
PY

# ------------------------------------------------------------------------------ metric names
echo "== metric names against a running tollgate ($TOLLGATE_BIN demo)"
if [ ! -x "$TOLLGATE_BIN" ]; then
  fail "metric names: tollgate binary not found at $TOLLGATE_BIN"
  finish
  exit $?
fi
"$TOLLGATE_BIN" demo --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --issuer-listen 127.0.0.1:0 --legacy-listen 127.0.0.1:0 \
  > "$WORK/demo.out" 2> "$WORK/demo.err" &
DEMO_PID=$!
for _ in $(seq 1 150); do
  grep -q '^  admin ' "$WORK/demo.out" 2>/dev/null && break
  kill -0 "$DEMO_PID" 2>/dev/null || break
  sleep 0.2
done
if ! grep -q '^  admin ' "$WORK/demo.out" 2>/dev/null; then
  fail "tollgate demo did not print its URLs"
  sed 's/^/       /' "$WORK/demo.err" | tail -n 20
  finish
  exit $?
fi
note "$(grep -E '^  (gateway|admin|issuer) ' "$WORK/demo.out" | awk '{print $1"="$2}' | paste -sd' ' -)"

# Traffic (127.0.0.1 only): a token, an allowed call (logs in upstream), a refused one without
# the token (401), a write with a read-only token (403), a public route, no route (404); then
# the session is logged out through the admin API (evictions, logouts). Then /metrics.
check_show "demo traffic and /metrics scrape" "$PY" - "$WORK/demo.out" "$WORK/metrics.txt" <<'PY'
import json, re, sys, urllib.error, urllib.parse, urllib.request
out = open(sys.argv[1]).read()
url = {k: re.search(rf"^  {k}\s+(http://127\.0\.0\.1:\d+)", out, re.M).group(1) for k in ("gateway", "admin", "issuer")}
def call(method, u, data=None, headers=None):
    req = urllib.request.Request(u, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
form = urllib.parse.urlencode({"grant_type": "password", "username": "reader", "password": "reader", "client_id": "demo-client"}).encode()
st, body = call("POST", url["issuer"] + "/token", form, {"Content-Type": "application/x-www-form-urlencoded"})
assert st == 200, f"token: {st}"
auth = {"Authorization": "Bearer " + json.loads(body)["access_token"]}
entity = url["gateway"] + "/entity/Default/24.200.001/Customer"
got = [call("GET", entity, headers=auth)[0], call("GET", entity, headers=auth)[0], call("GET", entity)[0],
       call("PUT", entity, b"{}", dict(auth, **{"Content-Type": "application/json"}))[0],
       call("GET", url["gateway"] + "/health")[0], call("GET", url["gateway"] + "/no/such/route")[0]]
want = [200, 200, 401, 403, None, 404]
bad = [(g, w) for g, w in zip(got, want) if w is not None and g != w]
assert not bad, f"gateway answers (got, wanted): {bad}"
st, body = call("GET", url["admin"] + "/sessions")
grants = {s["grant"] for s in json.loads(body)["sessions"]}
assert grants, "no upstream session after an allowed call"
for g in grants:
    assert call("DELETE", url["admin"] + "/sessions/" + g)[0] == 200
st, metrics = call("GET", url["admin"] + "/metrics")
assert st == 200, f"/metrics: {st}"
open(sys.argv[2], "wb").write(metrics)
print(f"statuses {got}; {len(grants)} session(s) logged out; {metrics.count(b'# TYPE ')} families exposed")
PY

check_show "every metric name in alerts.yml and the dashboard is exposed (with its label names)" \
  "$PY" - "$WORK/metrics.txt" <<'PY'
import json, re, sys, yaml

# --- what tollgate exposes, and what src/metrics.rs declares
expo = open(sys.argv[1]).read() if len(sys.argv) > 1 else ""
types, labels, le_values = {}, {}, {}
for line in expo.splitlines():
    m = re.match(r"# TYPE (\S+) (\S+)", line)
    if m:
        types[m.group(1)] = m.group(2)
        continue
    m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ", line)
    if m and not line.startswith("#"):
        name, body = m.group(1), m.group(2) or ""
        pairs = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', body)
        labels.setdefault(name, set()).update(k for k, _ in pairs)
        for k, v in pairs:
            if k == "le":
                le_values.setdefault(name, set()).add(v)
src = open("src/metrics.rs").read()
consts = dict(re.findall(r'pub const ([A-Z0-9_]+): &str =\s*"([a-z0-9_]+)"', src))
declared = set(consts.values())
histograms = {consts[c] for c in re.findall(r"histogram\(\s*([A-Z0-9_]+),", src) if c in consts}
src_labels = {consts[c]: set(re.findall(r'"(\w+)"', l))
              for c, l in re.findall(r"\(\s*([A-Z0-9_]+),\s*\"[^\"]*\",\s*&\[([^\]]*)\]", src) if c in consts}
if not declared or not types:
    sys.exit("could not read the metric constants or the exposition")

# --- where names are used: alert expressions and annotations, dashboard queries and texts
rules = yaml.safe_load(open("deploy/prometheus/alerts.yml"))
dash = json.load(open("deploy/grafana/dashboards/tollgate.json"))
exprs = [("alerts.yml " + r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]
texts = [a for g in rules["groups"] for r in g["rules"] for a in r.get("annotations", {}).values()]
for x in dash["panels"]:
    exprs += [(f"dashboard panel {x['title']!r}", t["expr"]) for t in x.get("targets", [])]
    texts.append(x.get("description", ""))
for v in dash["templating"]["list"]:
    if v["type"] == "query":
        exprs.append((f"dashboard variable {v['name']}", v["definition"]))
texts += [e for _, e in exprs]

NAME = re.compile(r"\b((?:tollgate|process)_[a-z0-9_]+)\b")
problems, live, from_src = [], set(), set()
def family(name):
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in histograms | {n for n, t in types.items() if t == "histogram"}:
            return name[: -len(suffix)], suffix
    return name, ""
used = sorted({n for t in texts for n in NAME.findall(t)})
for name in used:
    fam, suffix = family(name)
    if fam in types and (not suffix or types[fam] == "histogram"):
        live.add(name)
    elif fam in declared and (fam.startswith("tollgate_introspection_") or fam in ("tollgate_store_errors_total", "tollgate_store_operation_duration_seconds", "tollgate_tls_certificate_expiry_timestamp_seconds")):
        from_src.add(name)   # no series without an introspection issuer or a Redis store (the demo has neither)
    else:
        problems.append(f"{name}: not exposed by tollgate" + ("" if fam in declared else " and not declared in src/metrics.rs"))
for fam in types:
    if fam.startswith("tollgate_") and fam not in declared:
        problems.append(f"{fam}: exposed but not declared as a constant in src/metrics.rs")

# --- any other identifier used as a selector must be one of ours
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{|\[)")
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
for where, e in exprs:
    for ident, _ in SELECTOR.findall(e):
        if ident not in KEYWORDS and not NAME.fullmatch(ident):
            problems.append(f"{where}: selector {ident!r} is not a tollgate metric")

# --- label names in matchers and in by (...) clauses
def label_set(name):
    fam, suffix = family(name)
    s = set(labels.get(name, set())) | set(labels.get(fam, set()))
    s |= src_labels.get(fam, set())
    if suffix == "_bucket" or fam in histograms:
        s.add("le")
    return s | {"job", "instance"}
for where, e in exprs:
    fams = set()
    for m in re.finditer(r"\b((?:tollgate|process)_[a-z0-9_]+)\s*(\{([^}]*)\})?", e):
        name, body = m.group(1), m.group(3) or ""
        fams.add(name)
        for k, op, v in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', body):
            if k not in label_set(name):
                problems.append(f"{where}: {name} has no label {k!r}")
            if k == "le" and op == "=" and name in le_values and v not in le_values[name]:
                problems.append(f"{where}: {name} has no bucket le={v!r} (buckets: {sorted(le_values[name], key=lambda b: float(b.replace('+Inf', 'inf')))})")
    allowed = set().union(*(label_set(n) for n in fams)) if fams else set()
    for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", e):
        for k in (c.strip() for c in clause.split(",") if c.strip()):
            if k not in allowed:
                problems.append(f"{where}: groups by {k!r}, which none of its metrics has")

print(f"{len(used)} names used: {len(live)} exposed by the running demo, {len(from_src)} checked against src/metrics.rs instead")
if from_src:
    print("  not exposed by the demo (no introspection issuer, no Redis store and no TLS, so the prometheus crate omits these families);")
    print("  checked against src/metrics.rs constants: " + ", ".join(sorted(from_src)))
print("\n".join(problems))
sys.exit(1 if problems else 0)
PY
finish
