#!/usr/bin/env python3
"""Render deploy/helm/ebb with Helm's own engine and validate every rendered object.

Renderer: helm-python-sdk (PyPI), which binds Helm v4's Go SDK (chart loader, values merge,
text/template + sprig + Helm's include/tpl/required/toYaml, lint) through a C ABI; no helm
binary is needed. Built-in kinds are validated with kubernetes-validate (PyPI) in strict mode
(unknown fields rejected) against the Kubernetes OpenAPI schemas of each version in
K8S_VERSIONS; custom resources (ServiceMonitor, cert-manager Certificate, KEDA kinds) against
their CRD schemas via scripts/crd-validate.mjs. Run under the venv that
scripts/install-services.sh makes in .services/helm-tools.

  helm-chart-check.py chart  [--values FILE] [--out FILE]   render, lint, validate
  helm-chart-check.py files  FILE...                        validate plain manifests
"""
import argparse
import json
import os
import subprocess
import sys

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(REPO, "deploy", "helm", "ebb")
TOOLS = os.environ.get("EBB_HELM_TOOLS", os.path.join(REPO, ".services", "helm-tools"))
K8S_VERSIONS = ["1.33.0", "1.37.0"]
RELEASE, NAMESPACE = "ebb", "keda"


def is_builtin(obj):
    group = obj.get("apiVersion", "").rpartition("/")[0]
    return group == "" or "." not in group or group.endswith(".k8s.io")


def validate(objects, label):
    """Returns the number of failures; prints one line per object and version."""
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    failures = 0
    custom = []
    for obj in objects:
        name = f"{obj.get('apiVersion')} {obj.get('kind')} {obj.get('metadata', {}).get('name')}"
        if not is_builtin(obj):
            custom.append(obj)
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
                print(f"ok   {name} (Kubernetes {version} strict)")
            except SchemaNotFoundError as e:
                failures += 1
                print(f"FAIL {name}: {e}")
            except kubernetes_validate.ValidationError as e:
                failures += 1
                path = "/".join(str(p) for p in getattr(e, "absolute_path", []))
                print(f"FAIL {name} (Kubernetes {version}): /{path}: {getattr(e, 'message', e)}")
    if custom:
        node_modules = os.path.join(TOOLS, "node_modules")
        proc = subprocess.run(
            ["node", os.path.join(REPO, "scripts", "crd-validate.mjs"), node_modules],
            input=json.dumps(custom), capture_output=True, text=True,
        )
        sys.stdout.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            failures += max(1, proc.stdout.count("FAIL"))
    print(f"{label}: {len(objects)} objects, {failures} failed")
    return failures


def load_docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


def cmd_chart(args):
    import helm_python as helm

    values = {}
    for f in args.values or []:
        with open(f) as fh:
            values = helm_merge(values, yaml.safe_load(fh) or {})
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v1.33.0")
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + report.get("errors", [])
    for m in problems:
        print(f"FAIL lint: {m}")
    try:
        with helm.Chart.load(CHART) as chart:
            manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    except helm.HelmError as e:
        print(f"FAIL render: {e}")
        return 1
    objects, out = [], []
    for path in sorted(manifests):
        text = manifests[path]
        if path.endswith("NOTES.txt"):
            if not text.strip():
                print("FAIL NOTES.txt rendered empty")
                problems.append("notes")
            continue
        if not text.strip():
            continue
        out.append(f"---\n# Source: {path}\n{text.strip()}\n")
        objects += load_docs(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("".join(out))
    label = "values " + (", ".join(os.path.relpath(f, REPO) for f in args.values) if args.values else "defaults")
    return 1 if validate(objects, label) or problems else 0


def helm_merge(base, over):
    merged = dict(base)
    for k, v in over.items():
        merged[k] = helm_merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def cmd_files(args):
    objects = []
    for f in args.files:
        with open(f) as fh:
            objects += load_docs(fh.read())
    if not objects:
        print("no objects in " + " ".join(args.files))
        return 1
    return 1 if validate(objects, "files " + " ".join(os.path.relpath(f, REPO) for f in args.files)) else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("chart")
    c.add_argument("--values", action="append")
    c.add_argument("--out")
    f = sub.add_parser("files")
    f.add_argument("files", nargs="+")
    args = p.parse_args()
    return cmd_chart(args) if args.cmd == "chart" else cmd_files(args)


if __name__ == "__main__":
    sys.exit(main())
