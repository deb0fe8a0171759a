#!/usr/bin/env bash
# Reproduces the `ebb bench` figures of docs/bench.md (about 6 minutes on 2 cores):
#   1. upstream calls per polling interval for 10, 100 and 1,000 ScaledObjects on one source:
#      ebb (one poll per source) against the model of KEDA's built-in per-trigger polling;
#   2. GetMetrics latency while the source takes 2 s to answer;
#   3. peak cached GetMetrics: ebb's own closed loop at 16 and 64 in flight, and h2load
#      (Debian's nghttp2-client, installed if missing) at 1 × 16 and 4 × 32 streams.
# Everything runs on loopback, bounded in time. Output: one JSON line per run in
# target/bench-figures/, and a summary on stdout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release --quiet
EBB=${CARGO_TARGET_DIR:-target}/release/ebb
OUT=${CARGO_TARGET_DIR:-target}/bench-figures
mkdir -p "$OUT"
SECS=${EBB_FIGURES_SECONDS:-30}

summary() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], json.dumps({k: r.get(k) for k in sys.argv[3].split(",")}))' "$@"; }

echo "== 1. upstream calls per interval (pollingInterval 5 s, source active, ${SECS} s)"
for n in 10 100 1000; do
  "$EBB" bench --scaledobjects "$n" --polling-interval 5 --duration "$SECS" --source-trace steady:50 --json > "$OUT/ebb-$n.json"
  "$EBB" bench --per-trigger-model --scaledobjects "$n" --polling-interval 5 --duration "$SECS" --source-trace steady:50 --json > "$OUT/model-$n.json"
  summary "$OUT/ebb-$n.json" "ebb   $n" upstream_calls,upstream_calls_per_interval,total_rps,errors
  summary "$OUT/model-$n.json" "model $n" upstream_calls,upstream_calls_per_interval
done

echo "== 2. GetMetrics while the source takes 2 s (100 ScaledObjects, ${SECS} s)"
"$EBB" bench --scaledobjects 100 --polling-interval 5 --duration "$SECS" --source-delay 2 --source-trace steady:50 --json > "$OUT/slow-source.json"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("GetMetrics", r["rpcs"]["GetMetrics"], "errors", r["errors"])' "$OUT/slow-source.json"

echo "== 3a. peak cached GetMetrics, ebb bench closed loop (10 s per level)"
for c in 1 16 64; do
  "$EBB" bench --closed-loop --concurrency "$c" --connections 4 --duration 10 --json > "$OUT/closed-$c.json"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("in flight", sys.argv[2], r["rpcs"]["GetMetrics"], "cpu", r["scaler_cpu_cores"])' "$OUT/closed-$c.json" "$c"
done

echo "== 3b. peak cached GetMetrics, h2load"
command -v h2load >/dev/null || { SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nghttp2-client >/dev/null; }
GRPC=127.0.0.1:19090
"$EBB" serve --grpc-addr "$GRPC" --http-addr 127.0.0.1:19080 > "$OUT/serve.log" 2>&1 & serve_pid=$!
"$EBB" bench --source-only --source-addr 127.0.0.1:19091 --duration 120 > /dev/null 2>&1 & source_pid=$!
trap 'kill $serve_pid $source_pid 2>/dev/null || true' EXIT
"$EBB" bench --write-frame "$OUT/frame.bin" --source-addr 127.0.0.1:19091
sleep 1
h2() { h2load "$@" -H ':authority: localhost' -H 'content-type: application/grpc' -H 'te: trailers' \
  -d "$OUT/frame.bin" "http://$GRPC/externalscaler.ExternalScaler/GetMetrics"; }
h2 -n 200 -c 1 -m 1 > /dev/null   # warm: the first call polls the source
for shape in "1 16" "4 32"; do
  set -- $shape
  echo "h2load -c $1 -m $2:"
  h2 -D 10 -c "$1" -m "$2" | grep -E "finished in|requests:|status codes|time for request"
done
# h2load checks HTTP status only: ebb's own counters say how many answers came from the cache
# (gRPC OK) and how many waited for a first poll.
curl -s http://127.0.0.1:19080/metrics | grep -E "^ebb_(cache_hits_total|cache_misses_total)" || true
