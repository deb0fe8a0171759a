#!/usr/bin/env python3
"""Robustness matrix of `ebb simulate`: every built-in trace and the public real-world series of
scripts/real-traces.py, for a log and a queue, under one change of setting or fault per cell,
each cell judged PASS/FAIL against the bars of issue 23. Writes the markdown table into
docs/simulate.md between `<!-- matrix:begin -->` and `<!-- matrix:end -->`.

  scripts/simulate-matrix.py [path/to/ebb] [--print] [--check]

  --print   print the table instead of writing docs/simulate.md
  --check   exit 1 if any cell fails (docs/simulate.md is left alone)

Runs two cells at a time (the machine it was written on has two cores).
"""
import concurrent.futures
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "simulate.md")
BEGIN, END = "<!-- matrix:begin -->", "<!-- matrix:end -->"
WORKERS = 2

FAULT_S, OUTAGE_S = 600, 300
# Recovery: ebb's replica-seconds over this late window, 20 min after the longest fault ends;
# a fault starts early enough to leave at least 10 min of it.
RECOVERY_AFTER, RECOVERY_S, LATEST_START_BEFORE_END = FAULT_S + 1200, 3600, FAULT_S + 1200 + 600

# Where a fault starts, for the built-in traces (seed 42): the start of their busiest 10 minutes
# that leaves the recovery window. steady is flat; diurnal peaks at 14:00 (the 10 min centred
# there); spike-then-idle's second spike starts at 1800 + 617 s; bursty's, found with
# `--report-window S:600` for S in steps of 60 s (the floor row's window figure is the work).
BUSY = {"steady": 3000, "bursty": 2640, "diurnal": 50_100, "spike-then-idle": 2417}
LENGTH = {"steady": 7200, "bursty": 7200, "diurnal": 86_400, "spike-then-idle": 7200}


def load_real_traces():
    spec = importlib.util.spec_from_file_location("real_traces", os.path.join(REPO, "scripts", "real-traces.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def busiest(path, span=FAULT_S):
    """The second where the `span`-second mean arrival rate of a CSV trace is highest, among
    those that leave the recovery window; and the trace's length."""
    with open(path) as f:
        counts = [int(line.split(",")[1]) for line in f.read().splitlines()[1:]]
    window = sum(counts[:span])
    best, at = window, 0
    for t in range(1, max(1, len(counts) - LATEST_START_BEFORE_END + 1)):
        window += counts[t + span - 1] - counts[t - 1]
        if window > best:
            best, at = window, t
    return at, len(counts)


def cells(kind):
    """(name, extra flags, is a fault) for one source kind; `{B}` is the busy start."""
    out = [
        ("default", [], False),
        ("slowdown", ["--slowdown", f"{{B}}:{FAULT_S}"], True),
        ("bottleneck", ["--bottleneck", f"{{B}}:{FAULT_S}"], True),
        ("startup 5 s", ["--startup-delay", "5"], False),
        ("startup 60 s", ["--startup-delay", "60"], False),
        ("startup 120 s", ["--startup-delay", "120"], False),
        ("aca", ["--platform", "aca"], False),
        ("outage", ["--outage", f"{{B}}:{OUTAGE_S}"], True),
        ("restart", ["--restart-at", "{B}"], True),
        ("throughput 5", ["--throughput", "5"], False),
        ("throughput 25", ["--throughput", "25"], False),
    ]
    if kind == "log":
        out.append(("partitions 16", ["--partitions", "16"], False))
    else:
        out.append(("max 16", ["--max-replicas", "16"], False))
    # threshold 50 is the default cell.
    out += [(f"threshold {t}", ["--keda-target", t], False) for t in ("5", "10", "100")]
    if kind == "log":
        out.append(("commit 30 s", ["--commit-interval", "30"], False))
    else:
        out.append(("throughputPerReplica 10", ["--throughput-per-replica", "10"], False))
    out.append(("poisson", ["--arrivals", "poisson"], False))
    return out


def simulate(ebb, args):
    out = subprocess.run([ebb, "simulate", "--json", *args], check=True, capture_output=True, text=True)
    return {p["policy"]: p for p in json.loads(out.stdout)["policies"]}


def jobs(traces):
    """Every run: (key, flags). A cell's key is (trace, kind, cell); each fault cell's
    recovery is read against the default cell, which carries the same window."""
    for trace, (path, busy, length) in traces.items():
        window = (busy + RECOVERY_AFTER, min(RECOVERY_S, length - busy - RECOVERY_AFTER))
        for kind in ("log", "queue"):
            for name, extra, fault in cells(kind):
                flags = ["--trace", path, "--source-kind", kind, *(f.replace("{B}", str(busy)) for f in extra)]
                if (fault or name == "default") and window[1] > 0:
                    flags += ["--report-window", f"{window[0]}:{window[1]}"]
                yield (trace, kind, name, fault), flags


def judge(key, p, base):
    """(cell figures, failures) of one cell; `base` is the default cell of its trace and kind."""
    trace, kind, name, fault = key
    e = p["ebb-configured" if name.startswith("throughputPerReplica") else "ebb"]
    k, t = p["keda-default"], p["keda-tuned"]
    fails = []
    if e["replica_seconds"] > 1.05 * k["replica_seconds"]:
        fails.append("cost")
    if e["wait_p95_s"] > max(1.25 * k["wait_p95_s"], k["wait_p95_s"] + 5):
        fails.append("p95")
    recovery = None
    if fault:
        w, w0 = e.get("window_replica_seconds"), base["ebb"].get("window_replica_seconds")
        if w is not None and w0 is not None:
            recovery = w / w0 if w0 else (1.0 if w == 0 else float("inf"))
            if recovery > 1.15:
                fails.append("recovery")
    if kind == "log" and name == "default":
        if e["replica_seconds"] > 0.6 * k["replica_seconds"] or e["wait_p95_s"] > k["wait_p95_s"]:
            fails.append("log bar vs keda-default")
        if e["replica_seconds"] > t["replica_seconds"] or e["wait_p95_s"] > t["wait_p95_s"] + 5:
            fails.append("log bar vs keda-tuned")
    return (e, k, t, p["floor"], recovery), fails


def row(key, figures, fails):
    trace, kind, name, _ = key
    e, k, t, floor, recovery = figures
    ratio = lambda a, b: f"{a['replica_seconds'] / b['replica_seconds']:.2f}" if b["replica_seconds"] else "-"
    rec = "-" if recovery is None else f"{recovery:.2f}"
    verdict = "PASS" if not fails else "FAIL: " + ", ".join(fails)
    return (f"| {trace} | {kind} | {name} | {ratio(e, k)} | {ratio(e, t)} | {ratio(e, floor)} | "
            f"{e['wait_p95_s']} s | {k['wait_p95_s']} s | {e['scale_events']} / {k['scale_events']} | {rec} | {verdict} |")


def table(ebb, traces):
    keys, results = [], {}
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        futures = {}
        for key, flags in jobs(traces):
            keys.append(key)
            futures[pool.submit(simulate, ebb, flags)] = key
        for f in concurrent.futures.as_completed(futures):
            results[futures[f]] = f.result()
    lines = ["| trace | source | cell | ebb / keda-default | ebb / keda-tuned | ebb / floor | ebb p95 | "
             "keda-default p95 | scale events ebb / keda-default | recovery | result |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    failed = []
    for key in keys:
        base = results[(key[0], key[1], "default", False)]
        figures, fails = judge(key, results[key], base)
        lines.append(row(key, figures, fails))
        if fails:
            failed.append(f"{key[0]}/{key[1]}/{key[2]}")
    summary = (f"{len(keys)} cells, {len(keys) - len(failed)} pass, {len(failed)} fail"
               + (": " + ", ".join(failed) if failed else ""))
    return "\n".join(lines), summary, failed


def traces(tmp):
    """trace name → (what `--trace` takes, busy start, length in seconds)."""
    out = {name: (name, BUSY[name], LENGTH[name]) for name in BUSY}
    real = load_real_traces()
    for name in real.SERIES:
        path = os.path.join(tmp, f"{name}.csv")
        real.trace_csv(name, path)
        busy, length = busiest(path)
        out[name] = (path, busy, length)
    return out


def write_doc(text):
    with open(DOC) as f:
        doc = f.read()
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    with open(DOC, "w") as f:
        f.write(doc[:start] + "\n" + text + "\n" + doc[end:])


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    ebb = args[0] if args else os.path.join(REPO, "target", "release", "ebb")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        text, summary, failed = table(ebb, traces(tmp))
    # Real traces are written to a temporary directory: show their names, not the paths.
    text = "\n".join(l.replace(f"| {tmp}/", "| ") for l in text.splitlines())
    body = f"{text}\n\n{summary}"
    if "--print" in sys.argv or "--check" in sys.argv:
        print(body)
    else:
        write_doc(body)
        print(summary)
    print(f"took {time.monotonic() - started:.0f} s with {WORKERS} workers", file=sys.stderr)
    if "--check" in sys.argv and failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
