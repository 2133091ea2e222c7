"""Checks of deploy/ that no off-the-shelf tool makes; run by scripts/check-deploy.sh.

  check_deploy.py alerts              alert rules: labels, annotations, runbook anchors that
                                      exist in docs/OPERATIONS.md, metrics that exist in
                                      docs/METRICS.md, a unit test for every alert
  check_deploy.py compose RESOLVED    the output of `docker-compose config`: mounted files
                                      exist, probes and grace periods, Prometheus targets,
                                      Grafana provisioning, the OTel collector's pipelines
  check_deploy.py systemd             the worker unit's stop timeout covers its drain
  check_deploy.py k8s-configs OUTDIR  writes the ConfigMap's master.toml and worker.toml to OUTDIR
"""

import pathlib
import re
import sys
import tomllib

import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
errors = []


def fail(msg):
    errors.append(msg)


def ok(msg):
    print(f"ok: {msg}")


def duration_s(text):
    total = 0.0
    for n, unit in re.findall(r"(\d+)(ms|s|m|h)", text):
        total += int(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    if not total and text not in ("0", "0s"):
        raise ValueError(f"unsupported duration {text!r}")
    return total


def github_anchor(heading):
    a = heading.strip().lower()
    a = re.sub(r"[^\w\- ]", "", a)
    return a.replace(" ", "-")


def anchors(md_path):
    return {github_anchor(m) for m in re.findall(r"^#+\s+(.*)$", md_path.read_text(), re.M)} | set(
        re.findall(r'<a id="([^"]+)"', md_path.read_text())
    )


def check_alerts():
    path = DEPLOY / "prometheus" / "alerts.yml"
    text = path.read_text()
    if not text.isascii():
        fail(f"{path}: contains non-ASCII characters")
    rules = [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]]
    ops = REPO / "docs" / "OPERATIONS.md"
    have_anchors = anchors(ops)
    metrics = set(re.findall(r"^\| `(cronmesh_[a-z_]+)` \|", (REPO / "docs" / "METRICS.md").read_text(), re.M))
    tests = yaml.safe_load((DEPLOY / "prometheus" / "alerts.test.yml").read_text())
    tested = {
        t["alertname"]
        for test in tests["tests"]
        for t in test.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    names = set()
    for r in rules:
        name = r.get("alert")
        if not name:
            fail(f"a rule without alert name: {r}")
            continue
        if name in names:
            fail(f"alert {name} defined twice")
        names.add(name)
        if "for" not in r:
            fail(f"{name}: no `for`")
        if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            fail(f"{name}: severity must be critical, warning or info")
        ann = r.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not ann.get(key):
                fail(f"{name}: no {key} annotation")
        want = f"docs/OPERATIONS.md#{name.lower()}"
        if ann.get("runbook_url") != want:
            fail(f"{name}: runbook_url must be {want}")
        if name.lower() not in have_anchors:
            fail(f"{name}: docs/OPERATIONS.md has no section '{name}' (anchor #{name.lower()})")
        for m in re.findall(r"\b(cronmesh_[a-z_]+)", r["expr"]):
            base = re.sub(r"_(bucket|sum|count)$", "", m)
            if m not in metrics and base not in metrics:
                fail(f"{name}: metric {m} is not in docs/METRICS.md")
        if name not in tested:
            fail(f"{name}: no test in alerts.test.yml expects it to fire")
    if not errors:
        ok(f"{len(rules)} alerts: for, severity, summary, description, runbook section in docs/OPERATIONS.md, known metrics, a firing test each")


def check_compose(resolved_path):
    c = yaml.safe_load(pathlib.Path(resolved_path).read_text())
    services = c["services"]
    for want in ["etcd-1", "etcd-2", "etcd-3", "mongodb", "mongodb-init", "master-1", "master-2",
                 "worker-1", "worker-2", "worker-3", "prometheus", "grafana", "otel-collector", "jaeger"]:
        if want not in services:
            fail(f"compose: no service {want}")
    # bind mounts: the files exist (docker-compose config does not look)
    nbinds = 0
    for name, s in services.items():
        for v in s.get("volumes", []):
            src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if src.startswith("/"):
                nbinds += 1
                if not pathlib.Path(src).exists():
                    fail(f"compose: {name} mounts {src}, which does not exist")
    worker_toml = tomllib.loads((DEPLOY / "compose" / "worker.toml").read_text())
    drain = duration_s(worker_toml["worker"]["drain_timeout"])
    for name, s in services.items():
        if name.startswith(("master-", "worker-", "etcd-", "mongodb", "prometheus")) and name != "mongodb-init":
            if "healthcheck" not in s:
                fail(f"compose: {name} has no healthcheck")
        if name.startswith(("master-", "worker-")):
            if not s.get("read_only") or s.get("cap_drop") != ["ALL"] or "no-new-privileges:true" not in s.get("security_opt", []):
                fail(f"compose: {name} must be read_only, drop ALL capabilities, no-new-privileges")
        if name.startswith("worker-"):
            grace = duration_s(s.get("stop_grace_period", "10s"))
            if grace < drain + 10:
                fail(f"compose: {name} stop_grace_period {grace:g}s must exceed drain_timeout {drain:g}s by 10s")
        if name.startswith("master-"):
            deps = s.get("depends_on", {})
            if deps.get("mongodb-init", {}).get("condition") != "service_completed_successfully":
                fail(f"compose: {name} must wait for mongodb-init to complete")
    # Prometheus scrapes every cronmesh and etcd service under the job names the alerts use
    prom = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: [t for sc in j["static_configs"] for t in sc["targets"]] for j in prom["scrape_configs"]}
    for job, prefix, port in (("cronmesh-master", "master-", 8070), ("cronmesh-worker", "worker-", 9101), ("etcd", "etcd-", 2379)):
        want = sorted(f"{n}:{port}" for n in services if n.startswith(prefix))
        if sorted(jobs.get(job, [])) != want:
            fail(f"compose prometheus.yml: job {job} targets {jobs.get(job)}, expected {want}")
    # Grafana: the provisioning files point at the mounted dashboards and at the prometheus service
    ds = yaml.safe_load((REPO / "dashboards" / "provisioning" / "datasource.yaml").read_text())
    host = re.match(r"https?://([^:/]+)", ds["datasources"][0]["url"]).group(1)
    if host not in services:
        fail(f"grafana datasource url points at {host}, not a compose service")
    dash = yaml.safe_load((REPO / "dashboards" / "provisioning" / "dashboards.yaml").read_text())
    dash_path = dash["providers"][0]["options"]["path"]
    if not any(str(v).endswith(":" + dash_path + ":ro") or f":{dash_path}:" in str(v) for v in services["grafana"]["volumes"]):
        fail(f"grafana: nothing is mounted at the provisioned dashboards path {dash_path}")
    # OTel collector: every pipeline component is defined; cronmesh exports to it
    otel = yaml.safe_load((DEPLOY / "compose" / "otel-collector.yaml").read_text())
    for pname, p in otel["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for comp in p.get(kind, []):
                if comp not in (otel.get(kind) or {}):
                    fail(f"otel-collector.yaml: pipeline {pname} uses undefined {kind[:-1]} {comp}")
    for ext in otel["service"].get("extensions", []):
        if ext not in (otel.get("extensions") or {}):
            fail(f"otel-collector.yaml: undefined extension {ext}")
    exporter_hosts = {re.match(r"(?:https?://)?([^:/]+)", e["endpoint"]).group(1) for e in otel["exporters"].values() if "endpoint" in e}
    for h in exporter_hosts:
        if h not in services:
            fail(f"otel-collector.yaml exports to {h}, not a compose service")
    for f in ("master.toml", "worker.toml"):
        t = tomllib.loads((DEPLOY / "compose" / f).read_text())
        host = re.match(r"https?://([^:/]+)", t["tracing"]["endpoint"]).group(1)
        if t["tracing"]["enabled"] and host not in services:
            fail(f"compose/{f}: tracing endpoint host {host} is not a compose service")
    if not errors:
        ok(f"compose: {len(services)} services, {nbinds} mounted files exist, probes, sandboxing, grace periods, Prometheus targets, Grafana provisioning, OTel pipelines")


def check_systemd():
    unit = (DEPLOY / "systemd" / "cronmesh-worker.service").read_text()
    keys = dict(re.findall(r"^(\w+)=(.*)$", unit, re.M))
    drain = duration_s(tomllib.loads((REPO / "config" / "worker.toml").read_text())["worker"]["drain_timeout"])
    stop_raw = keys.get("TimeoutStopSec", "90")  # systemd: a bare number is seconds
    stop = float(stop_raw) if stop_raw.isdigit() else duration_s(stop_raw)
    if keys.get("KillMode") != "mixed":
        fail("cronmesh-worker.service: KillMode must be mixed (SIGTERM to the worker only; it drains)")
    if stop < drain + 10:
        fail(f"cronmesh-worker.service: TimeoutStopSec {stop:g}s must exceed drain_timeout {drain:g}s by 10s")
    for unit_name in ("cronmesh-master.service", "cronmesh-worker.service"):
        text = (DEPLOY / "systemd" / unit_name).read_text()
        for need in ("User=cronmesh", "NoNewPrivileges=true", "ProtectSystem=strict", "PrivateTmp=true",
                     "Restart=on-failure", "LimitNOFILE=", "ReadWritePaths=/var/lib/cronmesh", "CapabilityBoundingSet="):
            if need not in text:
                fail(f"{unit_name}: missing {need}")
    if not errors:
        ok(f"systemd: worker KillMode=mixed, TimeoutStopSec {stop:g}s > drain_timeout {drain:g}s + 10s; hardening keys present")


def k8s_configs(outdir):
    out = pathlib.Path(outdir)
    for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / "configmap.yaml").read_text()):
        if doc and doc.get("kind") == "ConfigMap":
            for key, value in doc["data"].items():
                (out / key).write_text(value)


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "alerts":
        check_alerts()
    elif cmd == "compose" and len(sys.argv) == 3:
        check_compose(sys.argv[2])
    elif cmd == "systemd":
        check_systemd()
    elif cmd == "k8s-configs" and len(sys.argv) == 3:
        k8s_configs(sys.argv[2])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    for e in errors:
        print(f"FAIL: {e}", file=sys.stderr)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
