//! The Helm chart in deploy/helm/ebb: rendered by Helm's own engine (helm-python-sdk, Helm v4's
//! Go SDK) with several value sets, linted, and every rendered object validated, built-in kinds
//! against the Kubernetes OpenAPI schemas (strict: unknown fields fail) and custom resources
//! against their CRD schemas; the KEDA examples in deploy/keda are validated too. See
//! scripts/helm-chart-check.py. The tools come from scripts/install-services.sh.

// Starts real servers (scripts/install-services.sh): built with `--features integration`,
// which scripts/test.sh (and so CI) turns on.
#![cfg(feature = "integration")]

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tools_python() -> PathBuf {
    let tools =
        std::env::var_os("EBB_HELM_TOOLS").map(PathBuf::from).unwrap_or_else(|| repo().join(".services/helm-tools"));
    let python = tools.join("venv/bin/python");
    let node_ok = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(
        python.exists() && tools.join("node_modules/@kubernetes-models/keda").exists() && node_ok,
        "the Helm chart check tools are missing ({}, node on PATH): run scripts/install-services.sh",
        tools.display()
    );
    python
}

/// Runs scripts/helm-chart-check.py with `args`; returns (success, stdout+stderr).
fn check(args: &[&str]) -> (bool, String) {
    let out = Command::new(tools_python())
        .arg(repo().join("scripts/helm-chart-check.py"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run scripts/helm-chart-check.py");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Renders with the given values files (relative to the chart), validates, returns the manifests.
fn render_and_validate(values: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rendered.yaml");
    let mut args = vec!["chart".to_string(), "--out".into(), out.display().to_string()];
    for v in values {
        args.push("--values".into());
        args.push(repo().join("deploy/helm/ebb").join(v).display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, text) = check(&args);
    assert!(ok, "chart with {values:?} failed to render or validate:\n{text}");
    assert!(text.contains(", 0 failed"), "{text}");
    std::fs::read_to_string(out).unwrap()
}

fn kinds(manifests: &str) -> Vec<String> {
    manifests.lines().filter_map(|l| l.strip_prefix("kind: ")).map(str::to_string).collect()
}

#[test]
fn default_values_render_and_validate() {
    let m = render_and_validate(&[]);
    let mut k = kinds(&m);
    k.sort();
    assert_eq!(k, ["Deployment", "NetworkPolicy", "PodDisruptionBudget", "Service", "ServiceAccount"], "{m}");
    assert!(m.contains("replicas: 2"), "{m}");
    assert!(m.contains("grpc:\n              port: 9090"), "liveness is a gRPC probe:\n{m}");
    assert!(m.contains("path: /readyz"), "{m}");
    assert!(m.contains("preferredDuringSchedulingIgnoredDuringExecution"), "{m}");
    assert!(m.contains("readOnlyRootFilesystem: true") && m.contains("- ALL"), "{m}");
    assert!(!m.contains("EBB_KUBE") && !m.contains("clusterIP: None") && !m.contains("--tls-cert"), "{m}");
    // No config and no access policy: no ConfigMap, no EBB_CONFIG.
    assert!(!m.contains("EBB_CONFIG") && !m.contains("--azure-"), "{m}");
    // The NetworkPolicy admits KEDA's operator (the KEDA chart's in `keda`, the AKS add-on's in
    // kube-system) to the gRPC port, the monitoring namespace to the HTTP port, nothing else.
    let np = network_policy(&m).expect("a NetworkPolicy");
    for needle in [
        "policyTypes:\n    - Ingress",
        "- from:\n        - namespaceSelector:\n            matchLabels:\n              kubernetes.io/metadata.name: keda\n          podSelector:\n            matchLabels:\n              app.kubernetes.io/name: keda-operator\n",
        "kubernetes.io/metadata.name: kube-system\n          podSelector:\n            matchLabels:\n              app: keda-operator\n      ports:\n        - port: 9090\n          protocol: TCP",
        "kubernetes.io/metadata.name: monitoring\n      ports:\n        - port: 8080\n          protocol: TCP",
        "podSelector:\n    matchLabels:\n      app.kubernetes.io/name: ebb\n      app.kubernetes.io/instance: ebb",
    ] {
        assert!(np.contains(needle), "missing {needle:?}:\n{np}");
    }
    assert_eq!(np.matches("- from:").count(), 2, "{np}");
}

/// The rendered NetworkPolicy document, if any.
fn network_policy(manifests: &str) -> Option<&str> {
    manifests.split("\n---\n").find(|doc| doc.lines().any(|l| l == "kind: NetworkPolicy"))
}

#[test]
fn all_features_render_and_validate() {
    let m = render_and_validate(&["ci/full-values.yaml"]);
    for kind in ["ClusterRole", "ClusterRoleBinding", "ServiceMonitor", "Certificate", "ConfigMap"] {
        assert!(kinds(&m).iter().any(|k| k == kind), "no {kind}:\n{m}");
    }
    for needle in [
        "clusterIP: None",
        "name: EBB_KUBE\n              value: \"true\"",
        "azure.workload.identity/client-id: 00000000-0000-0000-0000-000000000001",
        "azure.workload.identity/use: \"true\"",
        "--tls-cert=/etc/ebb/tls/tls.crt",
        "--tls-client-ca=/etc/ebb/tls/ca.crt",
        "mountPath: /etc/ebb/tls",
        "path: /healthz",
        "resources:\n    - triggerauthentications\n    verbs:\n    - get\n    - list\n    - watch",
        "resources:\n    - scaledobjects\n    verbs:\n    - get",
        "resources:\n    - deployments\n    - statefulsets\n    verbs:\n    - get",
        // The ConfigMap: config.content, then the values' access policy as its top-level key.
        "    scaledObjects:\n      - name: orders\n",
        "          outputMode: replicas\n    access:\n      bindings:\n      - authenticationRef: true\n",
        "        - entity: orders*\n          host: contoso-prod.servicebus.windows.net\n          service: servicebus\n",
        "        namespaces:\n        - orders\n        - orders-*\n        secrets:\n        - orders-sb\n      trustCallerNamespace: true\n",
        "name: EBB_CONFIG\n              value: \"/etc/ebb/config/config.yaml\"",
        // Private-cloud suffixes and Monitor audiences, before extraArgs.
        "- \"--azure-private-suffix=servicebus=servicebus.airgap.example\"\n            - \"--azure-private-suffix=storage=core.airgap.example\"\n            - \"--azure-monitor-audience=https://prometheus.monitor.airgap.example\"\n            - \"--max-staleness\"",
    ] {
        assert!(m.contains(needle), "missing {needle:?}:\n{m}");
    }
    // The NetworkPolicy with the custom peers instead of the defaults, plus the extra rule.
    let np = network_policy(&m).expect("a NetworkPolicy");
    for needle in [
        "kubernetes.io/metadata.name: keda-system\n          podSelector:\n            matchLabels:\n              app: keda-operator\n      ports:\n        - port: 9090\n",
        "kubernetes.io/metadata.name: observability\n          podSelector:\n            matchLabels:\n              app.kubernetes.io/name: prometheus\n      ports:\n        - port: 8080\n",
        "- from:\n      - ipBlock:\n          cidr: 10.20.0.0/16\n",
    ] {
        assert!(np.contains(needle), "missing {needle:?}:\n{np}");
    }
    assert!(!np.contains("kubernetes.io/metadata.name: monitoring") && !np.contains("kube-system"), "{np}");
}

#[test]
fn namespaced_rbac_renders_and_validates() {
    let m = render_and_validate(&["ci/namespaced-values.yaml"]);
    assert_eq!(kinds(&m).iter().filter(|k| *k == "Role").count(), 2, "{m}");
    assert!(!kinds(&m).iter().any(|k| k == "ClusterRole" || k == "ServiceAccount"), "{m}");
    assert!(m.contains("requiredDuringSchedulingIgnoredDuringExecution") && m.contains("maxUnavailable: 1"), "{m}");
    // networkPolicy.enabled: false renders none.
    assert!(network_policy(&m).is_none() && !kinds(&m).iter().any(|k| k == "NetworkPolicy"), "{m}");
    // An access policy alone (no config.enabled): a ConfigMap holding only `access:`, mounted.
    assert!(m.contains("  config.yaml: |\n    access:\n      bindings:\n"), "{m}");
    assert!(m.contains("name: EBB_CONFIG") && m.contains("mountPath: /etc/ebb/config\n"), "{m}");
}

#[test]
fn required_values_fail_the_render() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("v.yaml");
    std::fs::write(&values, "workloadIdentity:\n  enabled: true\n").unwrap();
    let (ok, text) = check(&["chart", "--values", values.to_str().unwrap()]);
    assert!(!ok && text.contains("workloadIdentity.clientId is required"), "{text}");
}

/// Values that contradict each other fail the render with a message naming them: `access` both in
/// config.content and in the values, a private suffix that is not SERVICE=SUFFIX.
#[test]
fn conflicting_values_fail_the_render() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "config:\n  enabled: true\n  content: |\n    scaledObjects: []\n    access: {bindings: []}\naccess:\n  bindings: []\n",
            "access is set both in config.content and in the values",
        ),
        ("azure:\n  privateSuffixes: [servicebus.airgap.example]\n", "is not SERVICE=SUFFIX"),
    ];
    for (i, (body, needle)) in cases.into_iter().enumerate() {
        let values = dir.path().join(format!("v{i}.yaml"));
        std::fs::write(&values, body).unwrap();
        let (ok, text) = check(&["chart", "--values", values.to_str().unwrap()]);
        assert!(!ok && text.contains(needle), "{body}:\n{text}");
    }
}

/// With every peer list empty the NetworkPolicy denies all ingress (`ingress: []`): an ingress
/// rule with an empty `from` would admit every source instead.
#[test]
fn network_policy_without_peers_denies_everything() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("v.yaml");
    std::fs::write(&values, "networkPolicy:\n  grpcFrom: []\n  httpFrom: []\n").unwrap();
    let out = dir.path().join("rendered.yaml");
    let (ok, text) = check(&["chart", "--values", values.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(ok && text.contains(", 0 failed"), "{text}");
    let m = std::fs::read_to_string(out).unwrap();
    let np = network_policy(&m).expect("a NetworkPolicy");
    assert!(np.contains("  ingress: []") && !np.contains("from:"), "{np}");
}

#[test]
fn keda_examples_validate_against_the_crd_schemas() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/keda"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let mut args = vec!["files".to_string()];
    args.extend(files.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, text) = check(&args);
    assert!(ok, "deploy/keda failed validation:\n{text}");
    assert!(text.contains("ScaledObject") && text.contains(", 0 failed"), "{text}");
}

/// The validators are not vacuous: an unknown Deployment field, a mistyped ScaledObject field,
/// a TriggerAuthentication without its required key and a ServiceMonitor endpoint of the wrong
/// type all fail.
#[test]
fn validators_reject_bad_objects() {
    let dir = tempfile::tempdir().unwrap();
    let bad = |name: &str, body: &str| -> (bool, String) {
        let f = dir.path().join(name);
        std::fs::write(&f, body).unwrap();
        check(&["files", f.to_str().unwrap()])
    };
    let cases = [
        (
            "deploy.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers: [{name: c, image: i, bogus: 1}]\n",
            "bogus",
        ),
        (
            "so.yaml",
            "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: x}\nspec:\n  scaleTargetRef: {name: d}\n  minReplicaCount: many\n  triggers: [{type: external, metadata: {scalerAddress: 'a:9090'}}]\n",
            "minReplicaCount",
        ),
        (
            "ta.yaml",
            "apiVersion: keda.sh/v1alpha1\nkind: TriggerAuthentication\nmetadata: {name: x}\nspec:\n  secretTargetRef: [{parameter: p, name: s}]\n",
            "key",
        ),
        (
            "sm.yaml",
            "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata: {name: x}\nspec:\n  selector: {}\n  endpoints: {port: http}\n",
            "endpoints",
        ),
    ];
    for (name, body, needle) in cases {
        let (ok, text) = bad(name, body);
        assert!(!ok && text.contains("FAIL") && text.contains(needle), "{name} was not rejected:\n{text}");
    }
}

/// The plain manifests (no Helm) validate too, NetworkPolicy included.
#[test]
fn plain_manifests_validate() {
    let file = repo().join("deploy/kubernetes/ebb.yaml");
    let (ok, text) = check(&["files", file.to_str().unwrap()]);
    assert!(ok && text.contains("NetworkPolicy") && text.contains(", 0 failed"), "{text}");
}
