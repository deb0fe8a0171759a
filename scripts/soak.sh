#!/usr/bin/env bash
# A bounded soak of `ebb serve` (default 20 minutes): `ebb bench` runs ebb as its child with
# 10,000 ScaledObjects over 100 sources (KEDA's poll cycle every 5 s, the HPA path every 15 s
# while active), 500 StreamIsActive streams reopened every 30 s (as a proxy that cuts streams makes
# KEDA do), a source that flips between idle and busy every 60 s, and samples the child's RSS and
# open file descriptors every minute. It prints the samples and their slopes (MiB/min, fds/min)
# and writes the JSON report to target/soak.json.
#   scripts/soak.sh [SECONDS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECS=${1:-1200}
cargo build --release --quiet
EBB=${CARGO_TARGET_DIR:-target}/release/ebb
"$EBB" bench --scaledobjects 10000 --sources 100 --polling-interval 5 --streams 500 --stream-churn 30 \
  --source-trace flip:60 --duration "$SECS" --sample-every 60 --connections 4 --json > "${CARGO_TARGET_DIR:-target}/soak.json"
python3 - "${CARGO_TARGET_DIR:-target}/soak.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for s in r.get("samples", []):
    print(f"t={s['t_s']:>5.0f}s  rss={s['rss_mib']:>6.1f} MiB  fds={s['fds']:.0f}")
print("RSS slope %.3f MiB/min, fd slope %.3f /min" % (r.get("rss_slope_mib_per_min", 0), r.get("fds_slope_per_min", 0)))
print("RPC/s %s, errors %s" % (r["total_rps"], r["errors"]))
for name, s in r["rpcs"].items():
    print(f"{name:<15} count {s['count']:>9}  p50 {s['p50_us']/1000:.2f} ms  p99 {s['p99_us']/1000:.2f} ms  max {s['max_us']/1000:.1f} ms")
PY
