"""Offline checks of deploy/kubernetes/ (run by validate.sh with kubernetes-validate installed).

1. kustomization.yaml lists every manifest of the folder, and only existing files.
2. Every object except the ServiceMonitor validates against the bundled Kubernetes JSON schemas
   (strict: unknown fields are errors) for the oldest and newest versions we support.
3. The ServiceMonitors (a CRD: no schema bundled) are checked structurally: selector, endpoints,
   and that each selects a Service of this folder that has the named port.
4. Cross-object facts: selectors match pod labels, probes use the endpoints cronmesh serves,
   referenced ConfigMap and Secret keys exist, containers meet the restricted Pod Security
   Standard, and the workers' grace period exceeds their drain timeout.
"""

import pathlib
import re
import sys
import tomllib

import kubernetes_validate
import yaml

HERE = pathlib.Path(__file__).resolve().parent
VERSIONS = ["1.29.0", "1.37.0"]
# what cronmesh serves: the master's API router and the worker's ops listener
ENDPOINTS = {"master": {"/healthz", "/readyz", "/metrics"}, "worker": {"/healthz", "/readyz", "/metrics"}}

errors = []


def fail(msg):
    errors.append(msg)


def ok(msg):
    print(f"ok: {msg}")


def duration_s(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unsupported duration {text!r}")
    n, unit = int(m.group(1)), m.group(2)
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


# 1. kustomization lists every file
kust = yaml.safe_load((HERE / "kustomization.yaml").read_text())
listed = kust.get("resources", [])
present = sorted(p.name for p in HERE.glob("*.yaml") if p.name != "kustomization.yaml")
for name in listed:
    if not (HERE / name).is_file():
        fail(f"kustomization.yaml lists {name}, which does not exist")
for name in present:
    if name not in listed:
        fail(f"{name} is not listed in kustomization.yaml resources")
if sorted(listed) == present:
    ok(f"kustomization.yaml lists every manifest ({len(present)})")

# load every object
objects = []
for name in present:
    for doc in yaml.safe_load_all((HERE / name).read_text()):
        if doc:
            objects.append((name, doc))


def by_kind(kind):
    return [(f, o) for f, o in objects if o.get("kind") == kind]


# 2. schemas
before = len(errors)
for f, o in objects:
    ident = f"{f}: {o.get('kind')}/{o.get('metadata', {}).get('name')}"
    if o.get("apiVersion", "").startswith("monitoring.coreos.com/"):
        continue
    for v in VERSIONS:
        try:
            kubernetes_validate.validate(o, v, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{ident} is invalid for Kubernetes {v}: {e.message} at {'.'.join(map(str, e.path))}")
        except kubernetes_validate.SchemaNotFoundError:
            fail(f"{ident}: no schema for it in Kubernetes {v}")
if len(errors) == before:
    ok(f"{sum(1 for _, o in objects if not o['apiVersion'].startswith('monitoring.'))} objects valid against the schemas of Kubernetes {', '.join(VERSIONS)} (strict)")

services = {o["metadata"]["name"]: o for _, o in by_kind("Service")}

# 3. ServiceMonitors, structurally
before = len(errors)
monitors = by_kind("ServiceMonitor")
if not monitors:
    fail("no ServiceMonitor found")
for f, o in monitors:
    name = o.get("metadata", {}).get("name")
    if o.get("apiVersion") != "monitoring.coreos.com/v1":
        fail(f"ServiceMonitor {name}: apiVersion must be monitoring.coreos.com/v1")
    spec = o.get("spec") or {}
    unknown = set(spec) - {"selector", "endpoints", "jobLabel", "namespaceSelector", "targetLabels", "podTargetLabels", "sampleLimit"}
    if unknown:
        fail(f"ServiceMonitor {name}: unexpected spec keys {sorted(unknown)}")
    sel = (spec.get("selector") or {}).get("matchLabels") or {}
    eps = spec.get("endpoints") or []
    if not sel or not eps:
        fail(f"ServiceMonitor {name}: needs spec.selector.matchLabels and spec.endpoints")
        continue
    matched = [s for s in services.values() if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
    if len(matched) != 1:
        fail(f"ServiceMonitor {name}: selects {len(matched)} Services, expected 1")
        continue
    svc = matched[0]
    ports = {p.get("name") for p in svc["spec"]["ports"]}
    for ep in eps:
        if set(ep) - {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings", "metricRelabelings", "honorLabels"}:
            fail(f"ServiceMonitor {name}: unexpected endpoint keys {sorted(ep)}")
        if ep.get("port") not in ports:
            fail(f"ServiceMonitor {name}: port {ep.get('port')!r} is not a port of Service {svc['metadata']['name']}")
        if ep.get("path", "/metrics") != "/metrics":
            fail(f"ServiceMonitor {name}: cronmesh serves metrics at /metrics")
        if "interval" in ep and not re.fullmatch(r"\d+(ms|s|m)", ep["interval"]):
            fail(f"ServiceMonitor {name}: bad interval {ep['interval']!r}")
    # the alert rules select on job="cronmesh-master" / "cronmesh-worker": the Service's name
    if svc["metadata"]["name"] not in ("cronmesh-master", "cronmesh-worker"):
        fail(f"ServiceMonitor {name}: scrapes Service {svc['metadata']['name']}, whose name is not a job the alert rules know")
if len(errors) == before:
    ok(f"{len(monitors)} ServiceMonitors checked structurally (no schema is bundled for the CRD)")

# 4. cross-object facts
configmaps = {o["metadata"]["name"]: o for _, o in by_kind("ConfigMap")}
secrets = {o["metadata"]["name"]: o for _, o in by_kind("Secret")}
deployments = {o["metadata"]["name"]: o for _, o in by_kind("Deployment")}
for want in ("cronmesh-master", "cronmesh-worker"):
    if want not in deployments:
        fail(f"no Deployment {want}")

for dname, d in deployments.items():
    role = "master" if "master" in dname else "worker"
    spec = d["spec"]
    tmpl = spec["template"]
    labels = tmpl["metadata"].get("labels", {})
    if any(labels.get(k) != v for k, v in spec["selector"]["matchLabels"].items()):
        fail(f"Deployment {dname}: selector does not match its pod labels")
    pod = tmpl["spec"]
    psc = pod.get("securityContext", {})
    if not psc.get("runAsNonRoot") or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        fail(f"Deployment {dname}: pod needs runAsNonRoot and seccompProfile RuntimeDefault")
    if pod.get("automountServiceAccountToken") is not False:
        fail(f"Deployment {dname}: automountServiceAccountToken must be false (cronmesh does not call the API)")
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False or sc.get("readOnlyRootFilesystem") is not True:
            fail(f"{dname}/{c['name']}: needs allowPrivilegeEscalation false and readOnlyRootFilesystem true")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            fail(f"{dname}/{c['name']}: must drop ALL capabilities")
        res = c.get("resources", {})
        if not res.get("requests") or not res.get("limits", {}).get("memory"):
            fail(f"{dname}/{c['name']}: needs resource requests and a memory limit")
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            p = c.get(probe)
            if not p:
                fail(f"{dname}/{c['name']}: no {probe}")
                continue
            path, port = p["httpGet"]["path"], p["httpGet"]["port"]
            if path not in ENDPOINTS[role]:
                fail(f"{dname}/{c['name']}: {probe} path {path} is not served by a {role}")
            if port not in ports:
                fail(f"{dname}/{c['name']}: {probe} port {port} is not a container port")
        if c["name"] and tmpl["metadata"].get("annotations", {}).get("prometheus.io/port") not in {str(v) for v in ports.values()}:
            fail(f"{dname}: prometheus.io/port annotation names no container port")
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["key"] not in (secrets.get(ref["name"], {}).get("stringData") or {}):
                fail(f"{dname}: env {e['name']} references missing secret key {ref['name']}/{ref['key']}")
        mounted = {m["name"] for m in c.get("volumeMounts", [])}
        if {"/tmp", "/var/lib/cronmesh"} - {m["mountPath"] for m in c.get("volumeMounts", [])}:
            fail(f"{dname}: a read-only root needs writable /tmp and /var/lib/cronmesh mounts")
        for m in mounted:
            if m not in vols:
                fail(f"{dname}: volumeMount {m} has no volume")
    for v in vols.values():
        cm = v.get("configMap")
        if cm:
            data = configmaps.get(cm["name"], {}).get("data", {})
            for item in cm.get("items", []):
                if item["key"] not in data:
                    fail(f"{dname}: volume {v['name']} references missing ConfigMap key {cm['name']}/{item['key']}")
    if role == "worker":
        worker_toml = tomllib.loads(configmaps["cronmesh-config"]["data"]["worker.toml"])
        drain = duration_s(worker_toml["worker"].get("drain_timeout", "30s"))
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace < drain + 15:
            fail(f"{dname}: terminationGracePeriodSeconds {grace} must exceed worker.drain_timeout ({drain:g}s) by at least 15s")
        else:
            print(f"ok: workers: terminationGracePeriodSeconds {grace}s > drain_timeout {drain:g}s + 15s")

for sname, s in services.items():
    sel = s["spec"].get("selector", {})
    if not any(all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items()) for d in deployments.values()):
        fail(f"Service {sname}: its selector matches no Deployment's pods")

for _, pdb in by_kind("PodDisruptionBudget"):
    sel = pdb["spec"]["selector"]["matchLabels"]
    if not any(d["spec"]["selector"]["matchLabels"] == sel for d in deployments.values()):
        fail(f"PodDisruptionBudget {pdb['metadata']['name']}: selects no Deployment")

if errors:
    for e in errors:
        print(f"FAIL: {e}", file=sys.stderr)
    sys.exit(1)
ok("cross-object checks (selectors, probes, keys, security contexts, grace period)")
