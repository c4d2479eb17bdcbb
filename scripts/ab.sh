#!/usr/bin/env bash
# Interleaved A/B of two `meridian` binaries: ROUNDS times, each binary in
# turn starts a fresh 3-node `meridian dev` cluster on 127.0.0.1, runs one
# `meridian bench` workload against it, and reports throughput, latency and
# the servers' CPU per request (utime + stime of the three server
# processes from /proc, divided by the requests). Interleaving matters on
# shared VMs, whose speed drifts over minutes. The benchmark client is
# always the first binary, so only the servers differ.
#
#   scripts/ab.sh OLD_BIN NEW_BIN
#   ROUNDS=3 WORKLOAD=lock-native DURATION=6 CLIENTS=100 CONNS=10 BASE_PORT=25000 scripts/ab.sh A B
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: scripts/ab.sh OLD_BIN NEW_BIN" >&2; exit 2; }
ROUNDS=${ROUNDS:-3}
WORKLOAD=${WORKLOAD:-put}
DURATION=${DURATION:-6}
CLIENTS=${CLIENTS:-100}
CONNS=${CONNS:-10}
BASE_PORT=${BASE_PORT:-25000}
BENCH=$1
for b in "$1" "$2"; do [ -x "$b" ] || { echo "ab: $b is not an executable" >&2; exit 2; }; done

WORK=$(mktemp -d -t meridian-ab.XXXXXX)
PGID=""
stop_cluster() {
  if [ -n "$PGID" ]; then
    kill -TERM -- "-$PGID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 -- "-$PGID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$PGID" 2>/dev/null || true
    PGID=""
  fi
}
trap 'stop_cluster; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

EPS="127.0.0.1:$BASE_PORT,127.0.0.1:$((BASE_PORT + 1)),127.0.0.1:$((BASE_PORT + 2))"
TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run_one() { # binary label
  local bin=$1 label=$2
  local dir="$WORK/$label"
  rm -rf "$dir"
  setsid "$bin" dev --data-dir "$dir" --base-port "$BASE_PORT" > "$WORK/dev.log" 2>&1 &
  PGID=$!
  for _ in $(seq 1 120); do grep -q '^endpoints:' "$WORK/dev.log" && break; sleep 0.5; done
  grep -q '^endpoints:' "$WORK/dev.log" || { echo "ab: the $label cluster did not start; see $WORK/dev.log" >&2; tail -5 "$WORK/dev.log" >&2; exit 1; }
  local pids before=0 after=0 p
  pids=$(pgrep -f "$dir/node-.*/meridian.toml" || true)
  for p in $pids; do before=$((before + $(cpu_ticks "$p"))); done
  local out
  out=$("$BENCH" bench --endpoints "$EPS" --workload "$WORKLOAD" --clients "$CLIENTS" --conns "$CONNS" \
          --duration-secs "$DURATION" --json 2>/dev/null | tail -n 1)
  for p in $pids; do after=$((after + $(cpu_ticks "$p"))); done
  stop_cluster
  echo "$out" | LABEL=$label CPU_TICKS=$((after - before)) TCK=$TCK python3 -c '
import json, os, sys
r = json.loads(sys.stdin.read())
ok = max(r["ok"], 1)
us = int(os.environ["CPU_TICKS"]) * 1e6 / int(os.environ["TCK"]) / ok
print("%-4s %9.0f ops/s  p50 %6.2f ms  p99 %6.2f ms  errors %d  servers %5.0f us CPU per request" %
      (os.environ["LABEL"], r["ops_per_sec"], r["p50_us"] / 1000, r["p99_us"] / 1000, r["errors"], us))'
}

echo "ab: $WORKLOAD, $CLIENTS clients over $CONNS connections, ${DURATION}s per run, $ROUNDS rounds; old=$1 new=$2"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round"
  run_one "$1" old
  run_one "$2" new
done
