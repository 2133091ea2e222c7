#!/usr/bin/env bash
# A real cronmesh cluster on one machine, without containers: a 3-member etcd cluster, 2 masters
# sharing one SQLite run log, 3 workers labelled zone=a/b/c, and Prometheus scraping all of them
# with deploy/prometheus/alerts.yml loaded.
#
#   deploy/local-cluster.sh up       start everything, wait until it is healthy, print the URLs
#   deploy/local-cluster.sh status   each process: alive or dead, pid, port (exit 0: all alive)
#   deploy/local-cluster.sh down     stop everything it started (SIGTERM, wait, SIGKILL); idempotent
#
# Environment:
#   CRONMESH_BIN            cronmesh binary (default target/release/cronmesh, then target/debug/cronmesh)
#   CLUSTER_DIR             data, configs, tokens, pids and logs (default ./data/cluster)
#   CLUSTER_PORT_BASE       first of the 31 ports used, BASE..BASE+30 (default 23000):
#                           etcd client/peer BASE+0..5, masters BASE+10/11, workers BASE+20..22,
#                           Prometheus BASE+30
#   CLUSTER_SCRAPE_INTERVAL Prometheus scrape and rule interval (default 5s)
#   CLUSTER_WAIT_SECONDS    how long `up` waits for each stage to become healthy (default 60)
#   CLUSTER_STOP_SECONDS    how long `down` waits after SIGTERM before SIGKILL (default 45: a
#                           worker drains for up to worker.drain_timeout, 30s)
#   ETCD_BIN, PROMETHEUS_BIN  (default: etcd and prometheus from PATH)
#
# Tokens are generated once into $CLUSTER_DIR/tokens.env (mode 0600) and kept across up/down;
# the masters' configs hold only their SHA-256. Data stays after `down`; `rm -rf $CLUSTER_DIR`
# starts from scratch.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { echo "local-cluster: $*" >&2; exit 1; }

cluster_dir=${CLUSTER_DIR:-$repo/data/cluster}
case $cluster_dir in /*) ;; *) cluster_dir=$PWD/$cluster_dir ;; esac
case $cluster_dir in *[\"\\\'$'\n']*) die "CLUSTER_DIR must not contain quotes, backslashes or newlines: $cluster_dir" ;; esac
cluster_dir=${cluster_dir%/}

base=${CLUSTER_PORT_BASE:-23000}
if ! [[ $base =~ ^[0-9]+$ ]] || ((base < 1024 || base + 30 > 65535)); then
  die "CLUSTER_PORT_BASE must be a number from 1024 to 65505 (it uses BASE..BASE+30), not '$base'"
fi
scrape=${CLUSTER_SCRAPE_INTERVAL:-5s}
wait_s=${CLUSTER_WAIT_SECONDS:-60}
stop_s=${CLUSTER_STOP_SECONDS:-45}
etcd_bin=${ETCD_BIN:-etcd}
prom_bin=${PROMETHEUS_BIN:-prometheus}

pids=$cluster_dir/pids
logs=$cluster_dir/logs
conf=$cluster_dir/conf

etcd_names=(etcd-1 etcd-2 etcd-3)
master_names=(master-1 master-2)
worker_names=(worker-1 worker-2 worker-3)
worker_zones=(a b c)
# stop order: workers drain first (their last reports go to the masters), etcd last
all_names=("${worker_names[@]}" "${master_names[@]}" prometheus "${etcd_names[@]}")

etcd_client_port() { echo $((base + 2 * $1)); } # $1: index 0..2
etcd_peer_port() { echo $((base + 2 * $1 + 1)); }
master_port() { echo $((base + 10 + $1)); }
worker_port() { echo $((base + 20 + $1)); }
prom_port=$((base + 30))

port_of() {
  case $1 in
    etcd-*) etcd_client_port $((${1#etcd-} - 1)) ;;
    master-*) master_port $((${1#master-} - 1)) ;;
    worker-*) worker_port $((${1#worker-} - 1)) ;;
    prometheus) echo "$prom_port" ;;
  esac
}

# The pid of a process this cluster started, if it is still alive. A pid is ours only while its
# command line names this cluster's directory, so a recycled pid is never signalled.
live_pid() {
  local f=$pids/$1.pid pid
  [ -f "$f" ] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$cluster_dir/" || return 1
  # a zombie is not alive
  [ "$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" != Z ] || return 1
  echo "$pid"
}

port_in_use() {
  if command -v ss >/dev/null 2>&1; then
    [ -n "$(ss -Hltn "sport = :$1")" ]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

log_tail() {
  echo "---- last lines of $logs/$1.log" >&2
  tail -n 25 "$logs/$1.log" >&2 2>/dev/null || true
}

# start NAME WORKDIR [VAR=VALUE...] -- COMMAND...: runs COMMAND in its own session (so a
# terminal's Ctrl-C does not reach it), without any inherited CRONMESH_* variable (its config
# file must be the whole truth), stdin from /dev/null, output appended to logs/NAME.log.
start() {
  local name=$1 dir=$2
  shift 2
  local vars=()
  while [ "$1" != -- ]; do vars+=("$1"); shift; done
  shift
  mkdir -p "$dir"
  (
    cd "$dir"
    while IFS= read -r v; do unset "$v"; done < <(compgen -e | grep '^CRONMESH_' || true)
    exec env "${vars[@]}" setsid "$@"
  ) </dev/null >>"$logs/$name.log" 2>&1 &
  local pid=$! tries=0
  echo "$pid" >"$pids/$name.pid"
  # until the subshell has exec'd, its command line is this script's: wait for the exec, so
  # live_pid recognises the process from now on
  until live_pid "$name" >/dev/null; do
    if [ ! -d "/proc/$pid" ] || ((tries++ >= 100)); then log_tail "$name"; die "$name did not start"; fi
    sleep 0.05
  done
}

# await WHAT NAME... -- CHECK ARGS...: polls CHECK until it succeeds; fails early when one of
# the named processes died, and after CLUSTER_WAIT_SECONDS.
await() {
  local what=$1 watched=()
  shift
  while [ "$1" != -- ]; do watched+=("$1"); shift; done
  shift
  local deadline=$((SECONDS + wait_s)) n
  until "$@" >/dev/null 2>&1; do
    for n in "${watched[@]}"; do
      live_pid "$n" >/dev/null || { log_tail "$n"; die "$n exited while waiting until $what"; }
    done
    ((SECONDS < deadline)) || { for n in "${watched[@]}"; do log_tail "$n"; done; die "timed out after ${wait_s}s waiting until $what"; }
    sleep 0.2
  done
}

http_ok() { curl -fsS -m 2 -o /dev/null "$1"; }
etcd_healthy() { curl -fsS -m 2 "$1/health" | grep -q '"health":"true"'; }
workers_registered() {
  local body w
  body=$(curl -fsS -m 2 -H "Authorization: Bearer $CRONMESH_READ_TOKEN" "$1/api/v1/workers") || return 1
  for w in "${worker_names[@]}"; do
    grep -qF "\"id\":\"$w\"" <<<"$body" || return 1
  done
}

gen_token() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
sha256() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

etcd_endpoints_toml() {
  local i out=""
  for i in 0 1 2; do out+="${out:+, }\"http://127.0.0.1:$(etcd_client_port "$i")\""; done
  echo "[$out]"
}

# prom_targets PORT...: a YAML flow list of 127.0.0.1:PORT targets
prom_targets() {
  local out="" p
  for p in "$@"; do out+="${out:+, }'127.0.0.1:$p'"; done
  echo "[$out]"
}

write_configs() {
  local i name etcd_list masters_toml
  etcd_list=$(etcd_endpoints_toml)
  masters_toml=""
  for i in 0 1; do masters_toml+="${masters_toml:+, }\"http://127.0.0.1:$(master_port "$i")\""; done
  for i in 0 1; do
    name=${master_names[$i]}
    cat >"$conf/$name.toml" <<EOF
# generated by deploy/local-cluster.sh; rewritten at every \`up\`
etcd = $etcd_list
prefix = "/cronmesh/"

[master]
id = "$name"
listen = "127.0.0.1:$(master_port "$i")"
# both masters share one SQLite file on this machine (WAL; several processes may write it)
log_store = "sqlite://$cluster_dir/runs.db"

[master.auth]
# SHA-256 of the tokens in $cluster_dir/tokens.env
tokens = [
  { name = "local-admin", role = "admin", sha256 = "$(sha256 "$CRONMESH_ADMIN_TOKEN")" },
  { name = "local-read", role = "read", sha256 = "$(sha256 "$CRONMESH_READ_TOKEN")" },
  { name = "local-worker", role = "worker", sha256 = "$(sha256 "$CRONMESH_WORKER_TOKEN")" },
]
EOF
  done
  for i in 0 1 2; do
    name=${worker_names[$i]}
    cat >"$conf/$name.toml" <<EOF
# generated by deploy/local-cluster.sh; rewritten at every \`up\`
etcd = $etcd_list
prefix = "/cronmesh/"

[worker]
id = "$name"
labels = { zone = "${worker_zones[$i]}" }
listen = "127.0.0.1:$(worker_port "$i")"
masters = [$masters_toml]
spool_dir = "$cluster_dir/$name/spool"
drain_timeout = "30s"
# the worker token comes from the environment (CRONMESH_WORKER_TOKEN, from tokens.env)
EOF
  done
  {
    cat <<EOF
# generated by deploy/local-cluster.sh; rewritten at every \`up\`
global:
  scrape_interval: $scrape
  evaluation_interval: $scrape
  external_labels:
    cluster: local
rule_files:
  - $repo/deploy/prometheus/alerts.yml
scrape_configs:
  - job_name: cronmesh-master
    static_configs:
      - targets: $(prom_targets "$(master_port 0)" "$(master_port 1)")
  - job_name: cronmesh-worker
    static_configs:
EOF
    for i in 0 1 2; do
      echo "      - targets: ['127.0.0.1:$(worker_port "$i")']"
      echo "        labels: {worker: ${worker_names[$i]}, zone: ${worker_zones[$i]}}"
    done
    cat <<EOF
  - job_name: etcd
    static_configs:
      - targets: $(prom_targets "$(etcd_client_port 0)" "$(etcd_client_port 1)" "$(etcd_client_port 2)")
  - job_name: prometheus
    static_configs:
      - targets: ['127.0.0.1:$prom_port']
EOF
  } >"$conf/prometheus.yml"
  cat >"$cluster_dir/cluster.env" <<EOF
# generated by deploy/local-cluster.sh (no secrets here; tokens are in tokens.env)
CLUSTER_PORT_BASE=$base
CRONMESH_URL=http://127.0.0.1:$(master_port 0)
CRONMESH_MASTER_URLS=http://127.0.0.1:$(master_port 0),http://127.0.0.1:$(master_port 1)
CRONMESH_ETCD=$(tr -d '[]" ' <<<"$etcd_list")
PROMETHEUS_URL=http://127.0.0.1:$prom_port
EOF
}

resolve_bin() {
  local b
  for b in "${CRONMESH_BIN:-}" "$repo/target/release/cronmesh" "$repo/target/debug/cronmesh"; do
    if [ -n "$b" ] && [ -x "$b" ]; then echo "$b"; return; fi
    [ -z "${CRONMESH_BIN:-}" ] || die "CRONMESH_BIN=$CRONMESH_BIN is not an executable file"
  done
  die "no cronmesh binary: build it (cargo build --release) or set CRONMESH_BIN"
}

cmd_up() {
  local bin n i running=() busy=()
  bin=$(resolve_bin)
  for n in curl setsid sha256sum od "$etcd_bin" "$prom_bin"; do
    command -v "$n" >/dev/null 2>&1 || die "$n is required (etcd: apt-get install etcd-server; prometheus: apt-get install prometheus)"
  done
  for n in "${all_names[@]}"; do live_pid "$n" >/dev/null && running+=("$n"); done
  [ ${#running[@]} -eq 0 ] || die "already running: ${running[*]} (see \`$0 status\`; \`$0 down\` first)"
  for n in "${all_names[@]}"; do
    port_in_use "$(port_of "$n")" && busy+=("$(port_of "$n") ($n)")
  done
  for i in 0 1 2; do port_in_use "$(etcd_peer_port "$i")" && busy+=("$(etcd_peer_port "$i") (etcd-$((i + 1)) peer)"); done
  [ ${#busy[@]} -eq 0 ] || die "ports in use: ${busy[*]}; pick other ports with CLUSTER_PORT_BASE"

  umask 077
  mkdir -p "$cluster_dir" "$pids" "$logs" "$conf"
  chmod 0700 "$cluster_dir"
  if [ ! -s "$cluster_dir/tokens.env" ]; then
    {
      echo "# cronmesh local cluster tokens (generated; keep this file private)"
      echo "CRONMESH_ADMIN_TOKEN=$(gen_token)"
      echo "CRONMESH_READ_TOKEN=$(gen_token)"
      echo "CRONMESH_WORKER_TOKEN=$(gen_token)"
    } >"$cluster_dir/tokens.env"
  fi
  chmod 0600 "$cluster_dir/tokens.env"
  # shellcheck source=/dev/null
  . "$cluster_dir/tokens.env"
  write_configs

  # any failure from here on stops what was started
  trap 'echo "local-cluster: up failed; stopping what was started" >&2; cmd_down >&2' EXIT

  local initial="" token="cronmesh-local-$base"
  for i in 0 1 2; do initial+="${initial:+,}${etcd_names[$i]}=http://127.0.0.1:$(etcd_peer_port "$i")"; done
  for i in 0 1 2; do
    n=${etcd_names[$i]}
    # an existing data dir makes etcd ignore the --initial-* flags (a restart)
    start "$n" "$cluster_dir/$n" -- "$etcd_bin" --name "$n" --data-dir "$cluster_dir/$n/data" \
      --listen-client-urls "http://127.0.0.1:$(etcd_client_port "$i")" \
      --advertise-client-urls "http://127.0.0.1:$(etcd_client_port "$i")" \
      --listen-peer-urls "http://127.0.0.1:$(etcd_peer_port "$i")" \
      --initial-advertise-peer-urls "http://127.0.0.1:$(etcd_peer_port "$i")" \
      --initial-cluster "$initial" --initial-cluster-token "$token" --initial-cluster-state new \
      --auto-compaction-mode periodic --auto-compaction-retention 10m
  done
  for i in 0 1 2; do
    await "${etcd_names[$i]} is healthy" "${etcd_names[@]}" -- etcd_healthy "http://127.0.0.1:$(etcd_client_port "$i")"
  done
  echo "etcd: 3 members healthy"

  # one after the other: the first open of the shared SQLite file switches it to WAL, which
  # fails with "database is locked" if two processes do it at once
  for i in 0 1; do
    n=${master_names[$i]}
    start "$n" "$cluster_dir/$n" RUST_LOG=info RUST_BACKTRACE=0 NO_COLOR=1 -- "$bin" master --config "$conf/$n.toml"
    await "$n is ready" "$n" -- http_ok "http://127.0.0.1:$(master_port "$i")/readyz"
  done
  echo "masters: 2 ready"

  for i in 0 1 2; do
    n=${worker_names[$i]}
    start "$n" "$cluster_dir/$n" RUST_LOG=info RUST_BACKTRACE=0 NO_COLOR=1 "CRONMESH_WORKER_TOKEN=$CRONMESH_WORKER_TOKEN" -- \
      "$bin" worker --config "$conf/$n.toml"
  done
  for i in 0 1 2; do
    await "${worker_names[$i]} is ready" "${worker_names[@]}" -- http_ok "http://127.0.0.1:$(worker_port "$i")/readyz"
  done
  await "the masters list all 3 workers" "${worker_names[@]}" -- workers_registered "http://127.0.0.1:$(master_port 0)"
  echo "workers: 3 members (zone=a, zone=b, zone=c)"

  start prometheus "$cluster_dir/prometheus" -- "$prom_bin" --config.file "$conf/prometheus.yml" \
    --storage.tsdb.path "$cluster_dir/prometheus/data" --storage.tsdb.retention.time 7d \
    --web.listen-address "127.0.0.1:$prom_port"
  await "prometheus is ready" prometheus -- http_ok "http://127.0.0.1:$prom_port/-/ready"
  echo "prometheus: ready"
  trap - EXIT

  local m1 m2
  m1="http://127.0.0.1:$(master_port 0)"
  m2="http://127.0.0.1:$(master_port 1)"
  cat <<EOF

cronmesh local cluster is up (data, configs, logs: $cluster_dir)
  web page     $m1/   $m2/
  API          $m1/api/v1   (OpenAPI: $m1/api/v1/openapi.json)
  Prometheus   http://127.0.0.1:$prom_port/   (alerts: http://127.0.0.1:$prom_port/alerts)
  etcd         $(tr -d '[]" ' <<<"$(etcd_endpoints_toml)")
  admin token  $CRONMESH_ADMIN_TOKEN
               (all tokens: $cluster_dir/tokens.env, mode 0600)
Try:
  . $cluster_dir/tokens.env
  $bin ctl --url $m1 --token "\$CRONMESH_ADMIN_TOKEN" workers
Stop with: $0 down
EOF
}

cmd_status() {
  local n pid all=0
  printf '%-11s %-6s %-8s %s\n' NAME STATE PID PORT
  for n in "${etcd_names[@]}" "${master_names[@]}" "${worker_names[@]}" prometheus; do
    if pid=$(live_pid "$n"); then
      printf '%-11s %-6s %-8s %s\n' "$n" alive "$pid" "$(port_of "$n")"
    else
      printf '%-11s %-6s %-8s %s\n' "$n" dead - "$(port_of "$n")"
      all=3
    fi
  done
  return $all
}

# stop_group NAME...: SIGTERM to every live one, wait up to CLUSTER_STOP_SECONDS, then SIGKILL.
stop_group() {
  local n pid live=() deadline=$((SECONDS + stop_s))
  for n in "$@"; do
    if pid=$(live_pid "$n"); then
      kill -TERM "$pid" 2>/dev/null || true
      live+=("$n")
    fi
  done
  while [ ${#live[@]} -gt 0 ]; do
    local still=()
    for n in "${live[@]}"; do live_pid "$n" >/dev/null && still+=("$n"); done
    live=("${still[@]+"${still[@]}"}")
    [ ${#live[@]} -gt 0 ] || break
    if ((SECONDS >= deadline)); then
      for n in "${live[@]}"; do
        if pid=$(live_pid "$n"); then
          echo "$n (pid $pid) did not stop within ${stop_s}s: SIGKILL" >&2
          kill -KILL "$pid" 2>/dev/null || true
        fi
      done
      sleep 0.2
      break
    fi
    sleep 0.1
  done
  for n in "$@"; do
    if ! live_pid "$n" >/dev/null; then rm -f "$pids/$n.pid"; fi
  done
}

cmd_down() {
  local n any=0
  for n in "${all_names[@]}"; do live_pid "$n" >/dev/null && any=1; done
  if [ $any -eq 0 ]; then
    rm -f "$pids"/*.pid 2>/dev/null || true
    echo "local cluster: nothing running"
    return 0
  fi
  stop_group "${worker_names[@]}"
  stop_group "${master_names[@]}" prometheus
  # etcd members one at a time: stopped together, each one's leadership transfer waits for
  # the others and the stop takes seconds
  for n in etcd-3 etcd-2 etcd-1; do stop_group "$n"; done
  for n in "${all_names[@]}"; do
    live_pid "$n" >/dev/null && die "$n is still running"
  done
  echo "local cluster: stopped (data kept in $cluster_dir)"
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 up|down|status   (see the top of this file for the environment variables)" >&2
    exit 2
    ;;
esac
