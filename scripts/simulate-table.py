#!/usr/bin/env python3
"""Runs `ebb simulate` over the built-in traces, both source kinds and the robustness cases, and
prints the tables of docs/simulate.md (markdown). Every row is one command, printed with it.

  scripts/simulate-table.py [path/to/ebb]      (default: target/release/ebb)
"""
import json
import subprocess
import sys

EBB = sys.argv[1] if len(sys.argv) > 1 else "target/release/ebb"
TRACES = ["steady", "bursty", "diurnal", "spike-then-idle"]


def run(args):
    out = subprocess.run([EBB, "simulate", "--json", *args], check=True, capture_output=True, text=True)
    r = json.loads(out.stdout)
    return {p["policy"]: p for p in r["policies"]}


def cell(p):
    return f"{p['replica_seconds']:,} / {p['wait_p95_s']} s"


def compare(rows, extra_policies=()):
    print("| trace | source kind | keda-default replica-s / p95 | keda-tuned replica-s / p95 | ebb replica-s / p95 | "
          "ebb ×keda-default | ebb ×keda-tuned | ebb ×floor | "
          + "".join(f"{x} replica-s / p95 | " for x in extra_policies) + "oracle replica-s / p95 | floor replica-s | command |")
    print("|---|---|---|---|---|---|---|---|" + "---|" * len(extra_policies) + "---|---|---|")
    for trace, kind, args in rows:
        p = run(["--trace", trace, "--source-kind", kind, *args])
        k, t, e, o = p["keda-default"], p["keda-tuned"], p["ebb"], p["oracle"]
        extra = "".join(f"{cell(p[x])} | " for x in extra_policies)
        cmd = " ".join(["ebb simulate --trace", trace, "--source-kind", kind, *args])
        print(f"| {trace} | {kind} | {cell(k)} | {cell(t)} | {cell(e)} | {e['x_keda_default']:.2f} | "
              f"{e['x_keda_tuned']:.2f} | {e['x_floor']:.2f} | {extra}{cell(o)} | {p['floor']['replica_seconds']:,} | `{cmd}` |")


def main():
    print("### Built-in traces\n")
    compare([(t, k, []) for t in TRACES for k in ("log", "queue")], ("ebb-backlog",))
    print("\n### Queue with `throughputPerReplica` (true throughput 10 msg/s)\n")
    rows = [(t, "queue", ["--throughput-per-replica", tp]) for t in TRACES for tp in ("10",)]
    rows += [("steady", "queue", ["--throughput-per-replica", tp]) for tp in ("7", "13")]
    rows += [("bursty", "queue", ["--throughput-per-replica", tp]) for tp in ("7", "13")]
    compare(rows, ("ebb-configured",))
    print("\n### Queue reading the ready replicas (queue+R: `serve --kube`, `readyReplicas` bound)\n")
    compare([(t, "queue", ["--ready-replicas"]) for t in TRACES])
    rows = [(t, "queue", ["--ready-replicas", "--throughput-per-replica", "10"]) for t in TRACES]
    # Pods slower to start than startupSeconds (60 s against 30): read against estimated.
    rows += [(t, "queue", [*r, "--startup-delay", "60", "--throughput-per-replica", "10"])
             for t in ("steady", "bursty") for r in ([], ["--ready-replicas"])]
    compare(rows, ("ebb-configured",))
    print("\n### Robustness (log source unless said)\n")
    cases = [
        ["--slowdown", "3000:600"],
        ["--bottleneck", "3000:600"],
        ["--startup-delay", "5"],
        ["--startup-delay", "60"],
        ["--outage", "3000:120"],
        ["--restart-at", "3600"],
        ["--platform", "aca"],
        ["--commit-interval", "30"],
    ]
    compare([(t, "log", c) for t in ("steady", "bursty") for c in cases])
    compare([("steady", "queue", c) for c in (["--platform", "aca"], ["--outage", "3000:120"], ["--restart-at", "3600"])])


if __name__ == "__main__":
    main()
