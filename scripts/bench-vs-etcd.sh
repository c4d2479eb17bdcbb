#!/usr/bin/env bash
# Meridian and etcd side by side: the same `meridian bench` workloads over
# the etcd v3 API against a local 3-node Meridian cluster and a local
# 3-node etcd cluster, alternating, on 127.0.0.1 only. Everything it starts
# (processes, temp dirs) goes away on exit; safe to run again.
#
#   scripts/bench-vs-etcd.sh [--duration SECS] [--workloads a,b,c]
#   DURATION=5 CLIENTS=32 CONNS=8 WATCHERS=100 VALUE_SIZE=256 scripts/bench-vs-etcd.sh
#
# Workloads: put, put-1 (1 client, 1 connection), get-linearizable,
# get-serializable, watch, watch-1000 (1,000 watchers), watch-1k and
# watch-10k (1,000 / 10,000 watchers on one prefix over 100 streams, 1,000
# puts/s), watch-1k-fast (1,000 watchers, 5,000 puts/s), watch-idle-100k (server memory per idle watching), txn-cas,
# lock and lock-contended (Meridian's native lock vs etcd's lock API),
# lock-etcd-api (the etcd lock API on both), sessions (10,000 leases kept
# alive; server CPU and memory), ns-1/ns-4/ns-16 (puts over 1/4/16
# namespaces), failover (puts while the leader is killed with -9; runs last
# because it leaves each cluster one member short).
#
# Ports (override with MERIDIAN_BASE_PORT / ETCD_BASE_PORT): Meridian uses
# base..base+2 (client), +100 (peer), +200 (HTTP); etcd base..base+2 (client)
# and base+100.. (peer). The defaults stay below 10000, away from the test
# suite's ports and the ephemeral range.
#
# Threads: `meridian dev` runs each node single-threaded (worker_threads =
# 1, docs/operations.md); etcd runs with Go's default GOMAXPROCS (one per
# core). ETCD_GOMAXPROCS=1 runs the etcd members single-threaded too, for
# the comparison like for like.
set -euo pipefail

DURATION=${DURATION:-10}
WORKLOADS=${WORKLOADS:-put,put-1,get-linearizable,get-serializable,watch,watch-1000,txn-cas,lock,lock-contended,lock-etcd-api,sessions,ns-1,ns-4,ns-16,failover}
SESSIONS=${SESSIONS:-10000}
CLIENTS=${CLIENTS:-32}
CONNS=${CONNS:-8}
WATCHERS=${WATCHERS:-100}
VALUE_SIZE=${VALUE_SIZE:-256}
REQUESTS=${REQUESTS:-10000000}
MERIDIAN_BASE_PORT=${MERIDIAN_BASE_PORT:-9100}
ETCD_BASE_PORT=${ETCD_BASE_PORT:-9400}
ETCD_GOMAXPROCS=${ETCD_GOMAXPROCS:-}
case "$ETCD_GOMAXPROCS" in ''|[1-9]|[1-9][0-9]) ;; *) echo "bench-vs-etcd: ETCD_GOMAXPROCS must be 1..99 or unset" >&2; exit 2 ;; esac

while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=${2:?--duration needs seconds}; shift 2 ;;
    --duration=*) DURATION=${1#*=}; shift ;;
    --workloads) WORKLOADS=${2:?--workloads needs a list}; shift 2 ;;
    --workloads=*) WORKLOADS=${1#*=}; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "bench-vs-etcd: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$DURATION" in ''|*[!0-9]*) echo "bench-vs-etcd: --duration must be whole seconds" >&2; exit 2 ;; esac
if [ "$DURATION" -lt 1 ] || [ "$DURATION" -gt 600 ]; then
  echo "bench-vs-etcd: --duration must be 1..600 seconds" >&2; exit 2
fi

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/meridian-target}

# --- what we need ----------------------------------------------------------
# etcd-server: the etcd under test; etcd-client: etcdctl, for its health
# check; jq: the results table. Installed only when missing, as setup.sh does.
missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v jq >/dev/null 2>&1 || missing+=(jq)
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench-vs-etcd: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # Debian enables the packaged etcd service; this script runs its own members.
  if [[ " ${missing[*]} " == *" etcd-server "* ]]; then
    $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
fi
ETCD_VERSION=$(etcd --version | awk '/etcd Version/ {print $3}')
case "$ETCD_VERSION" in
  3.4.*|3.5.*|3.6.*) ;;
  *) echo "bench-vs-etcd: etcd $ETCD_VERSION is untested here (the flags used exist in 3.4-3.6)" >&2 ;;
esac

# The whole workspace, as `make verify` builds it: building one package alone
# unifies features differently and would rebuild RocksDB. MERIDIAN_BIN=path
# uses a binary already built instead.
if [ -n "${MERIDIAN_BIN:-}" ]; then
  MERIDIAN=$MERIDIAN_BIN
else
  cargo build -q --workspace --bins
  MERIDIAN="$CARGO_TARGET_DIR/debug/meridian"
fi

# --- cleanup: every child's process group, then the temp dir ---------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/meridian-bench-vs-etcd.XXXXXX")
PGIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pg in "${PGIDS[@]}"; do kill -TERM -- "-$pg" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    local alive=0
    for pg in "${PGIDS[@]}"; do kill -0 -- "-$pg" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && break
    sleep 0.1
  done
  for pg in "${PGIDS[@]}"; do kill -KILL -- "-$pg" 2>/dev/null || true; done
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $(seq "$MERIDIAN_BASE_PORT" $((MERIDIAN_BASE_PORT + 2))) $(seq $((MERIDIAN_BASE_PORT + 100)) $((MERIDIAN_BASE_PORT + 102))) \
         $(seq $((MERIDIAN_BASE_PORT + 200)) $((MERIDIAN_BASE_PORT + 202))) \
         $(seq "$ETCD_BASE_PORT" $((ETCD_BASE_PORT + 2))) $(seq $((ETCD_BASE_PORT + 100)) $((ETCD_BASE_PORT + 102))); do
  port_free "$p" || { echo "bench-vs-etcd: port $p on 127.0.0.1 is in use (set MERIDIAN_BASE_PORT / ETCD_BASE_PORT)" >&2; exit 1; }
done

# `setsid` makes each child the leader of its own process group, so cleanup
# reaches the servers `meridian dev` starts as well.
start_group() { setsid "$@" & PGIDS+=("$!"); }

# --- etcd: three members ---------------------------------------------------
ETCD_EPS=""
CLUSTER=""
for i in 0 1 2; do
  CLUSTER+="${CLUSTER:+,}e$i=http://127.0.0.1:$((ETCD_BASE_PORT + 100 + i))"
  ETCD_EPS+="${ETCD_EPS:+,}127.0.0.1:$((ETCD_BASE_PORT + i))"
done
for i in 0 1 2; do
  c=$((ETCD_BASE_PORT + i)); p=$((ETCD_BASE_PORT + 100 + i))
  start_group env ${ETCD_GOMAXPROCS:+GOMAXPROCS=$ETCD_GOMAXPROCS} etcd --name "e$i" --data-dir "$WORK/etcd-$i" \
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "$CLUSTER" --initial-cluster-state new --initial-cluster-token "bench-$$" \
    --logger zap --log-level warn >"$WORK/etcd-$i.log" 2>&1
done

# --- Meridian: three nodes via `meridian dev` --------------------------------
NAMESPACES=$(seq -s, -f '/ns%g/' 0 15)
start_group "$MERIDIAN" dev --data-dir "$WORK/meridian" --base-port "$MERIDIAN_BASE_PORT" --namespaces "$NAMESPACES" >"$WORK/meridian-dev.log" 2>&1
MERIDIAN_DEV_PID=${PGIDS[-1]}
MERIDIAN_EPS="127.0.0.1:$MERIDIAN_BASE_PORT,127.0.0.1:$((MERIDIAN_BASE_PORT + 1)),127.0.0.1:$((MERIDIAN_BASE_PORT + 2))"

echo "bench-vs-etcd: waiting for both clusters (data in $WORK)"
deadline=$((SECONDS + 120))
until grep -q '^endpoints:' "$WORK/meridian-dev.log" 2>/dev/null; do
  if [ $SECONDS -ge $deadline ] || ! kill -0 "$MERIDIAN_DEV_PID" 2>/dev/null; then
    echo "bench-vs-etcd: Meridian did not become ready; its log:" >&2; cat "$WORK/meridian-dev.log" >&2; exit 1
  fi
  sleep 0.5
done
until ETCDCTL_API=3 etcdctl --endpoints="$ETCD_EPS" --dial-timeout=1s endpoint health >/dev/null 2>&1; do
  if [ $SECONDS -ge $deadline ]; then
    echo "bench-vs-etcd: etcd did not become healthy; last log lines:" >&2; tail -n 20 "$WORK"/etcd-*.log >&2; exit 1
  fi
  sleep 0.5
done
echo "bench-vs-etcd: meridian $MERIDIAN_EPS, etcd $ETCD_VERSION $ETCD_EPS"

# --- the runs --------------------------------------------------------------
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
server_pids() { # target
  if [ "$1" = meridian ]; then pgrep -f -- "server --config $WORK/meridian" | paste -sd, -
  else pgrep -f "etcd --name e[0-9] --data-dir $WORK" | paste -sd, -; fi
}
leader_pid() { # target: the pid of the leader of the range holding /bench/put/
  if [ "$1" = meridian ]; then
    # Retried for up to 10 s: an election may be under way.
    for _ in $(seq 1 20); do
      for i in 0 1 2; do
        local id
        id=$(curl -sf --max-time 2 "http://127.0.0.1:$((MERIDIAN_BASE_PORT + 200 + i))/v1/cluster/status" \
          | jq -r '.ranges[] | select(.range_id == 2 and .role == "Leader") | .range_id' 2>/dev/null || true)
        if [ -n "$id" ]; then pgrep -f -- "server --config $WORK/meridian/node-$((i + 1))/"; return; fi
      done
      sleep 0.5
    done
  else
    local ep
    ep=$(ETCDCTL_API=3 etcdctl --endpoints="$ETCD_EPS" endpoint status -w json \
      | jq -r '.[] | select(.Status.leader == .Status.header.member_id) | .Endpoint')
    local i=$(( ${ep##*:} - ETCD_BASE_PORT ))
    pgrep -f "etcd --name e$i --data-dir $WORK"
  fi
}
run_one() { # target endpoints workload
  local target=$1 eps=$2 w=$3
  local args=(--clients "$CLIENTS" --conns "$CONNS" --watchers "$WATCHERS" --value-size "$VALUE_SIZE" --requests "$REQUESTS")
  local bw=$w
  case "$w" in
    put-1) bw=put; args=(--clients 1 --conns 1 --value-size "$VALUE_SIZE" --requests "$REQUESTS") ;;
    watch-1000) bw=watch; args=(--clients 1 --conns "$CONNS" --watchers 1000 --value-size "$VALUE_SIZE" --requests "$REQUESTS") ;;
    # Issue 15, part 4: watchers on one prefix over 100 streams, 1,000 puts/s.
    # watch-1k-fast: 1,000 watchers at 5,000 puts/s (more than either
    # system delivers on 2 cores, so events/s measures capacity).
    watch-1k|watch-10k|watch-1k-fast)
      bw=watch; local n=1000 rate=1000; [ "$w" = watch-10k ] && n=10000; [ "$w" = watch-1k-fast ] && rate=5000
      args=(--clients 1 --conns "$CONNS" --watchers "$n" --watch-streams 100 --put-rate "$rate" --value-size "$VALUE_SIZE" --requests "$REQUESTS") ;;
    # Server memory per idle watching at 100,000 watchings over 100 streams.
    watch-idle-100k) bw=watch-idle; args=(--clients 1 --conns "$CONNS" --watchers 100000 --watch-streams 100) ;;
    lock|lock-contended)
      if [ "$target" = meridian ]; then bw=lock-native; else bw=lock-etcd; fi
      [ "$w" = lock-contended ] && args+=(--lock-names 1) ;;
    lock-etcd-api) bw=lock-etcd ;;
    sessions) args+=(--sessions "$SESSIONS" --server-pids "$(server_pids "$target")") ;;
    ns-1|ns-4|ns-16)
      bw=put; local n=${w#ns-}
      args+=(--prefixes "$(seq -s, -f '/ns%g/' 0 $((n - 1)))") ;;
    failover)
      local pid; pid=$(leader_pid "$target")
      if [ -z "$pid" ]; then echo "bench-vs-etcd: no $target leader found; failover not run" >&2; return 1; fi
      echo "   (killing the $target leader, pid $pid, after $((DURATION / 3))s)"
      ( sleep $((DURATION / 3)); kill -9 "$pid" 2>/dev/null ) & ;;
  esac
  # Server CPU per operation, for every workload but sessions (which
  # reports CPU and memory itself).
  [ "$w" = sessions ] || args+=(--server-pids "$(server_pids "$target")")
  echo "== $w on $target (${DURATION}s)"
  "$MERIDIAN" bench --endpoints "$eps" --workload "$bw" --label "$target" "${args[@]}" --duration-secs "$DURATION" --json \
    | tee "$WORK/last.out"
  grep '^{' "$WORK/last.out" | jq -c --arg w "$w" '. + {workload: $w}' >>"$RESULTS" \
    || echo "bench-vs-etcd: no result for $w on $target" >&2
}
IFS=',' read -r -a WL <<<"$WORKLOADS"
for w in "${WL[@]}"; do
  run_one meridian "$MERIDIAN_EPS" "$w" || echo "bench-vs-etcd: $w on meridian failed" >&2
  run_one etcd "$ETCD_EPS" "$w" || echo "bench-vs-etcd: $w on etcd failed" >&2
done

# --- the table -------------------------------------------------------------
echo
echo "Meridian (one thread per node) vs etcd $ETCD_VERSION (GOMAXPROCS ${ETCD_GOMAXPROCS:-default}), ${DURATION}s per run, $CLIENTS clients over $CONNS connections ($WATCHERS watchers for watch), $VALUE_SIZE-byte values; latencies in ms"
jq -rs --argjson wl "$(printf '%s\n' "${WL[@]}" | jq -R . | jq -s .)" '
  def ms: if . == null then "-" else (. / 10 | round / 100 | tostring) end;
  def ratio(a; b): if (a == null or b == null or b == 0) then "-" else (a / b * 100 | round / 100 | tostring) end;
  def row: "| " + join(" | ") + " |";
  (["workload", "Meridian ops/s", "etcd ops/s", "ops/s M/etcd", "Meridian p50", "etcd p50", "Meridian p99", "etcd p99", "p99 M/etcd", "errors M / etcd", "notes M / etcd"] | row),
  (["---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---"] | row),
  ($wl[] as $w
   | (map(select(.workload == $w and .target == "meridian")) | first) as $m
   | (map(select(.workload == $w and .target == "etcd")) | first) as $e
   | [$w, ($m.ops_per_sec // "-" | tostring), ($e.ops_per_sec // "-" | tostring),
      ratio($m.ops_per_sec; $e.ops_per_sec),
      ($m.p50_us | ms), ($e.p50_us | ms), ($m.p99_us | ms), ($e.p99_us | ms),
      ratio($m.p99_us; $e.p99_us),
      "\($m.errors // "-") / \($e.errors // "-")",
      ([$m, $e] | map(if . == null then "-" else
         ([(if .max_gap_ms then "max gap \(.max_gap_ms) ms" else empty end),
           (if .server_cpu_pct_x10 then "cpu \(.server_cpu_pct_x10 / 10)%, rss \(.server_rss_mib) MiB" else empty end),
           (if .server_cpu_us_per_op then "cpu \(.server_cpu_us_per_op) µs/op" else empty end),
           (if .rss_per_watching_bytes != null then "\(.rss_per_watching_bytes) B/watching" else empty end),
           (if (.events_missing // 0) > 0 then "missing \(.events_missing)" else empty end),
           (if .expired_seen then "expired \(.expired_seen)" else empty end)] | join(", ")) end) | join(" / "))]
   | row)
' "$RESULTS"
echo
echo "raw results (JSON lines):"
cat "$RESULTS"
