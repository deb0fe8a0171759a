//! `ebb explain NAMESPACE/NAME`: why a ScaledObject is at its count, in a terminal. Reads the
//! status page's JSON (`/api/v1/status/scaledobjects/{namespace}/{name}`) from a running ebb, so it
//! tells the same story as the page.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

#[derive(clap::Args, Debug, Clone)]
pub struct ExplainArgs {
    /// The ScaledObject, as `NAMESPACE/NAME`.
    pub scaled_object: String,
    /// ebb's HTTP address (its status page); through `kubectl port-forward svc/ebb 8080` it is
    /// the default.
    #[arg(long, env = "EBB_ADDR", default_value = "http://127.0.0.1:8080")]
    pub addr: String,
    /// How many of the latest decisions to print.
    #[arg(long, default_value_t = 10)]
    pub last: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{0:?} is not NAMESPACE/NAME")]
    BadName(String),
    #[error("cannot reach ebb at {addr}: {detail}")]
    Unreachable { addr: String, detail: String },
    #[error("ebb at {addr} serves no ScaledObject {name} (is the status page on? `serve --status-page true`)")]
    NotFound { addr: String, name: String },
    #[error("ebb at {addr} answered HTTP {status}")]
    Http { addr: String, status: u16 },
    #[error("ebb's answer is not the status JSON: {0}")]
    Malformed(String),
}

/// Fetches the ScaledObject's status and renders it.
pub async fn run(args: &ExplainArgs) -> Result<String, ExplainError> {
    let (ns, name) = args
        .scaled_object
        .split_once('/')
        .filter(|(n, m)| !n.is_empty() && !m.is_empty() && !m.contains('/'))
        .ok_or_else(|| ExplainError::BadName(args.scaled_object.clone()))?;
    let base = args.addr.trim_end_matches('/');
    let url = format!("{base}/api/v1/status/scaledobjects/{}/{}", crate::status::seg(ns), crate::status::seg(name));
    let unreachable = |e: reqwest::Error| ExplainError::Unreachable { addr: base.to_owned(), detail: e.to_string() };
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(unreachable)?;
    let response = client.get(&url).send().await.map_err(unreachable)?;
    match response.status().as_u16() {
        200 => {}
        404 => return Err(ExplainError::NotFound { addr: base.to_owned(), name: args.scaled_object.clone() }),
        status => return Err(ExplainError::Http { addr: base.to_owned(), status }),
    }
    let body = response.text().await.map_err(unreachable)?;
    let v: Value = serde_json::from_str(&body).map_err(|e| ExplainError::Malformed(e.to_string()))?;
    render(&v, args.last)
}

/// The story of one ScaledObject's status JSON.
pub fn render(v: &Value, last: usize) -> Result<String, ExplainError> {
    let bad = |what: &str| ExplainError::Malformed(format!("no {what}"));
    let triggers = v.get("triggers").and_then(Value::as_array).ok_or_else(|| bad("triggers"))?;
    let mut out = String::new();
    let s = |t: &Value, k: &str| t.get(k).and_then(Value::as_str).unwrap_or("—").to_owned();
    let n = |t: &Value, k: &str| match t.get(k) {
        Some(Value::Number(x)) => x.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => "—".to_owned(),
    };
    let _ = writeln!(out, "{}/{}", s(v, "namespace"), s(v, "name"));
    for t in triggers {
        let _ = writeln!(out, "\ntrigger {} ({}, source {})", s(t, "metric_name"), s(t, "scaler"), s(t, "source"));
        let _ = writeln!(
            out,
            "  mode {}, policy {}, target {}, replicas {}..{}",
            s(t, "mode"),
            s(t, "policy"),
            n(t, "target"),
            n(t, "min_replicas"),
            n(t, "max_replicas")
        );
        let _ = writeln!(out, "  desired {} (active {}): {}", n(t, "desired_replicas"), n(t, "active"), s(t, "reason"));
        let _ = writeln!(out, "  what would change it: {}", s(t, "outlook"));
        let log = t.get("log").and_then(Value::as_array).ok_or_else(|| bad("log"))?;
        let _ = writeln!(out, "  last {} of {} decisions (UTC):", last.min(log.len()), log.len());
        for e in log.iter().rev().take(last) {
            let metric = match e.get("metric") {
                Some(Value::Number(x)) => format!("{:.2}", x.as_f64().unwrap_or_default()),
                _ => "—".to_owned(),
            };
            let _ = writeln!(
                out,
                "    {}  metric {:>10}  active {:<5}  desired {:>4}  {}",
                s(e, "time"),
                metric,
                n(e, "active"),
                n(e, "desired"),
                s(e, "reason")
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_decision_and_the_latest_entries_first() {
        let v = serde_json::json!({
            "namespace": "shop", "name": "orders",
            "triggers": [{
                "metric_name": "prometheus-1", "scaler": "prometheus", "source": "prometheus|x",
                "mode": "replicas", "policy": "backlog", "target": 70.0, "min_replicas": 0, "max_replicas": 10,
                "desired_replicas": 7, "active": true,
                "reason": "held by scale-down window until 12:03:05 (recommendation 3)",
                "outlook": "2 min 0 s more at or below 210 and ebb scales to 3",
                "log": [
                    {"time": "12:00:05", "metric": 480.0, "active": true, "desired": 7, "reason": "recommendation"},
                    {"time": "12:01:05", "metric": 190.0, "active": true, "desired": 7, "reason": "held by scale-down window until 12:03:05 (recommendation 3)"}
                ]
            }]
        });
        let text = render(&v, 1).unwrap();
        assert!(text.starts_with("shop/orders\n"), "{text}");
        assert!(text.contains("desired 7 (active true): held by scale-down window until 12:03:05"), "{text}");
        assert!(text.contains("what would change it: 2 min 0 s more at or below 210 and ebb scales to 3"), "{text}");
        assert!(
            text.contains("last 1 of 2 decisions") && text.contains("12:01:05") && !text.contains("12:00:05"),
            "{text}"
        );
        assert!(matches!(render(&serde_json::json!({}), 1), Err(ExplainError::Malformed(_))));
    }
}
