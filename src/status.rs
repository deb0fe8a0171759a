//! The status page on the HTTP port: why each ScaledObject is at its count, with the evidence.
//!
//! - `GET /`: every source (scaler, source key, interval, last poll, last error, upstream calls) and
//!   every ScaledObject trigger (mode, policy, metric, active, desired, last reason).
//! - `GET /scaledobjects/{namespace}/{name}`: per trigger, charts of the metric, the desired
//!   count and the activity over the decision log's window (inline SVG), what would change the
//!   count, and the log as a table.
//! - `GET /api/v1/status/sources`, `/api/v1/status/scaledobjects` and
//!   `/api/v1/status/scaledobjects/{namespace}/{name}`: the same as JSON (what `ebb explain`
//!   reads), next to the Container Apps bridge's `/api/v1/scaledobjects/...`.
//!
//! Server-rendered, no script and no external asset. Nothing here shows a metadata value:
//! source keys carry salted fingerprints, never secrets, and errors are `PollError` texts,
//! which never quote a secret nor an upstream body.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::time::Instant;

use crate::engine::decision::Why;
use crate::engine::log::{Entry, clock_time, known};
use crate::engine::policy::{OutputMode, Rule};
use crate::engine::{Engine, Trigger};

pub fn router(engine: Engine) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/scaledobjects/{namespace}/{name}", get(detail))
        .route("/api/v1/status/sources", get(|State(e): State<Engine>| async move { Json(sources(&e)) }))
        .route("/api/v1/status/scaledobjects", get(|State(e): State<Engine>| async move { Json(scaled_objects(&e)) }))
        .route("/api/v1/status/scaledobjects/{namespace}/{name}", get(detail_json))
        .with_state(engine)
}

/// One polled source.
#[derive(Debug, Serialize)]
pub struct SourceView {
    pub scaler: &'static str,
    /// The source key: endpoint, entity and salted credential fingerprints, never a secret.
    pub source: String,
    pub interval_seconds: f64,
    /// Seconds since the last good poll finished; `None` before one.
    pub last_poll_age_seconds: Option<f64>,
    pub last_error: Option<String>,
    /// Polls of the source so far: the upstream calls as `ebb_upstream_calls_total` counts them
    /// (one per poll; an Event Hubs or Kafka poll fans out into several requests).
    pub upstream_calls: u64,
    pub triggers: usize,
}

/// One ScaledObject trigger, as the overview lists it.
#[derive(Debug, Serialize)]
pub struct TriggerView {
    pub namespace: String,
    pub name: String,
    pub metric_name: String,
    pub scaler: &'static str,
    pub source: String,
    pub mode: &'static str,
    pub policy: &'static str,
    pub target: f64,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub metric: Option<f64>,
    pub active: Option<bool>,
    pub desired_replicas: Option<u32>,
    pub reason: Option<String>,
    /// What would change the count.
    pub outlook: Option<String>,
}

/// One trigger with its decision log.
#[derive(Debug, Serialize)]
pub struct TriggerDetail {
    #[serde(flatten)]
    pub summary: TriggerView,
    pub log: Vec<LogRow>,
}

#[derive(Debug, Serialize)]
pub struct LogRow {
    #[serde(flatten)]
    pub entry: Entry,
    pub time: String,
    pub reason: String,
}

fn sources(e: &Engine) -> Vec<SourceView> {
    let now = Instant::now();
    e.sources()
        .iter()
        .map(|s| {
            let st = s.status().borrow().clone();
            SourceView {
                scaler: s.scaler_type,
                source: s.key.to_string(),
                interval_seconds: s.interval().as_secs_f64(),
                last_poll_age_seconds: st.last_good_received.map(|t| now.saturating_duration_since(t).as_secs_f64()),
                last_error: st.last_error.map(|e| e.to_string()),
                upstream_calls: st.polls,
                triggers: s.trigger_count(),
            }
        })
        .collect()
}

fn view(t: &Trigger) -> TriggerView {
    let p = &t.options.policy;
    let last = t.log.last();
    let d = t.decide(Instant::now());
    TriggerView {
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        metric_name: t.metric_name.clone(),
        scaler: t.scaler.scaler_type(),
        source: t.source.key.to_string(),
        mode: match p.output_mode {
            OutputMode::Metric => "metric",
            OutputMode::Replicas => "replicas",
        },
        policy: match p.rule {
            Rule::Backlog => "backlog",
            Rule::Drain(_) => "drain",
        },
        target: p.target,
        min_replicas: p.min_replicas,
        max_replicas: p.max_replicas,
        metric: last.and_then(|e| known(e.metric)).map(f64::from),
        active: d.map(|d| d.active),
        desired_replicas: d.map(|d| d.desired_replicas),
        reason: last.map(|e| e.reason()),
        outlook: last.map(|e| outlook(&e, t)),
    }
}

/// What would change the count, from the rule that bound it.
pub fn outlook(e: &Entry, t: &Trigger) -> String {
    let p = &t.options.policy;
    if e.source_error.is_some() {
        return "a good poll of the source: until then the count holds".into();
    }
    let level = |n: u32| format_number(p.target * f64::from(n));
    match e.why {
        Why::ScaleDownWindow { remaining_secs, recommendation } => format!(
            "{} more at or below {} and ebb scales to {recommendation}",
            duration_text(f64::from(remaining_secs)),
            level(recommendation)
        ),
        Why::Cooldown { remaining_secs } => {
            format!("{} more without activity and ebb scales to 0", duration_text(f64::from(remaining_secs)))
        }
        Why::CooledToZero => "activity (the metric above its activation threshold) wakes it".into(),
        Why::StepLimit { step, recommendation } => {
            format!("ebb adds at most {step} per poll until {recommendation} while the metric stays")
        }
        Why::AtMaxReplicas { wanted } => format!("only a higher maxReplicaCount (the metric asks for {wanted})"),
        Why::Recommendation => match e.desired {
            0 => "activity wakes it".into(),
            n => format!("the metric above {} scales up; below {} scales down", level(n), level(n - 1)),
        },
        Why::Drain { reason } => format!("policy: drain: {}", reason.label()),
    }
}

fn duration_text(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..=119 => format!("{s} s"),
        _ => format!("{} min {} s", s / 60, s % 60),
    }
}

fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{v:.0}") } else { format!("{v:.2}") }
}

fn scaled_objects(e: &Engine) -> Vec<TriggerView> {
    e.triggers().iter().map(|t| view(t)).collect()
}

fn details(e: &Engine, namespace: &str, name: &str) -> Vec<TriggerDetail> {
    e.triggers()
        .iter()
        .filter(|t| t.namespace == namespace && t.name == name)
        .map(|t| TriggerDetail {
            summary: view(t),
            log: t
                .log
                .entries()
                .into_iter()
                .map(|entry| LogRow { time: clock_time(entry.at_ms), reason: entry.reason(), entry })
                .collect(),
        })
        .collect()
}

async fn detail_json(State(e): State<Engine>, Path((namespace, name)): Path<(String, String)>) -> Response {
    let d = details(&e, &namespace, &name);
    if d.is_empty() {
        return (StatusCode::NOT_FOUND, Json(serde_json::json!({"error": "no such ScaledObject"}))).into_response();
    }
    Json(serde_json::json!({"namespace": namespace, "name": name, "triggers": d})).into_response()
}

// ---------------------------------------------------------------------------------------------
// HTML
// ---------------------------------------------------------------------------------------------

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;\
vertical-align:top}th{background:#f3f3f3}code{font-size:12px;word-break:break-all}.err{color:#a00}\
svg{background:#fafafa;border:1px solid #ddd;margin:.25em 0}h2{margin-top:1.5em}";

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <link rel=\"icon\" href=\"data:,\"><style>{STYLE}</style></head><body>{body}\
         <p><small>ebb never shows secret values here: source keys carry salted fingerprints, \
         and errors never quote a secret or a source's answer.</small></p></body></html>",
        esc(title)
    ))
}

/// HTML-escapes text.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment, percent-encoded.
pub fn seg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| esc(&v.to_string()))
}

async fn index(State(e): State<Engine>) -> Html<String> {
    let mut b = String::from(
        "<h1>ebb</h1><h2>Sources</h2><table><tr><th>scaler</th><th>source</th>\
        <th>interval</th><th>last poll</th><th>last error</th><th>upstream calls</th><th>triggers</th></tr>",
    );
    for s in sources(&e) {
        let _ = write!(
            b,
            "<tr><td>{}</td><td><code>{}</code></td><td>{} s</td><td>{}</td><td class=\"err\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(s.scaler),
            esc(&s.source),
            format_number(s.interval_seconds),
            s.last_poll_age_seconds.map_or("—".into(), |a| format!("{a:.1} s ago")),
            opt(s.last_error),
            s.upstream_calls,
            s.triggers
        );
    }
    b.push_str(
        "</table><h2>ScaledObjects</h2><table><tr><th>ScaledObject</th><th>scaler</th><th>mode</th>\
        <th>policy</th><th>metric</th><th>active</th><th>desired</th><th>last reason</th></tr>",
    );
    for t in scaled_objects(&e) {
        let _ = write!(
            b,
            "<tr><td><a href=\"/scaledobjects/{}/{}\">{}/{}</a><br><small>{}</small></td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            seg(&t.namespace),
            seg(&t.name),
            esc(&t.namespace),
            esc(&t.name),
            esc(&t.metric_name),
            esc(t.scaler),
            t.mode,
            t.policy,
            opt(t.metric.map(format_number)),
            opt(t.active),
            opt(t.desired_replicas),
            opt(t.reason),
        );
    }
    b.push_str("</table>");
    page("ebb status", &b)
}

async fn detail(State(e): State<Engine>, Path((namespace, name)): Path<(String, String)>) -> Response {
    let ds = details(&e, &namespace, &name);
    if ds.is_empty() {
        let body = format!(
            "<p>No ScaledObject {}/{} is served.</p><p><a href=\"/\">All ScaledObjects</a></p>",
            esc(&namespace),
            esc(&name)
        );
        return (StatusCode::NOT_FOUND, page("not found", &body)).into_response();
    }
    let mut b = format!("<p><a href=\"/\">All ScaledObjects</a></p><h1>{}/{}</h1>", esc(&namespace), esc(&name));
    for d in &ds {
        let t = &d.summary;
        let _ = write!(
            b,
            "<h2>{}</h2><p>{} · source <code>{}</code> · mode {} · policy {} · target {} · replicas {}–{}</p>\
             <p><strong>Desired {}</strong>, active {}: <strong class=\"reason\">{}</strong></p><p>What would change it: {}</p>",
            esc(&t.metric_name),
            esc(t.scaler),
            esc(&t.source),
            t.mode,
            t.policy,
            format_number(t.target),
            t.min_replicas,
            t.max_replicas,
            opt(t.desired_replicas),
            opt(t.active),
            opt(t.reason.clone()),
            opt(t.outlook.clone()),
        );
        let entries: Vec<&Entry> = d.log.iter().map(|r| &r.entry).collect();
        b.push_str(&chart("metric", &entries, |e| known(e.metric).map(f64::from), false));
        b.push_str(&chart("desired replicas", &entries, |e| Some(f64::from(e.desired)), true));
        b.push_str(&chart("active", &entries, |e| Some(if e.active { 1.0 } else { 0.0 }), true));
        b.push_str(
            "<table><tr><th>time (UTC)</th><th>metric</th><th>active</th><th>arrival/s</th>\
            <th>per replica/s</th><th>recommendation</th><th>desired</th><th>reason</th></tr>",
        );
        for r in d.log.iter().rev() {
            let e = &r.entry;
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                r.time,
                opt(known(e.metric).map(|v| format_number(f64::from(v)))),
                e.active,
                opt(known(e.arrival_rate).map(|v| format_number(f64::from(v)))),
                opt(known(e.throughput).map(|v| format_number(f64::from(v)))),
                opt(e.recommendation),
                e.desired,
                esc(&r.reason)
            );
        }
        b.push_str("</table>");
    }
    page(&format!("{namespace}/{name}"), &b).into_response()
}

/// A line chart of `value` over the log's window as inline SVG; `steps` draws a step line.
fn chart(title: &str, entries: &[&Entry], value: impl Fn(&Entry) -> Option<f64>, steps: bool) -> String {
    const W: f64 = 640.0;
    const H: f64 = 120.0;
    const PAD: f64 = 24.0;
    let points: Vec<(u64, f64)> = entries.iter().filter_map(|e| value(e).map(|v| (e.at_ms, v))).collect();
    let mut svg = format!(
        "<figure><figcaption>{}</figcaption><svg role=\"img\" aria-label=\"{}\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(title),
        esc(title)
    );
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        let span = (last.0 - first.0).max(1) as f64;
        let top = points.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1.0);
        let x = |t: u64| PAD + (t - first.0) as f64 / span * (W - 2.0 * PAD);
        let y = |v: f64| H - PAD - v / top * (H - 2.0 * PAD);
        let mut path = String::new();
        for (i, &(t, v)) in points.iter().enumerate() {
            if i > 0 && steps {
                let _ = write!(path, " {:.1},{:.1}", x(t), y(points[i - 1].1));
            }
            let _ = write!(path, " {:.1},{:.1}", x(t), y(v));
        }
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"#1565c0\" stroke-width=\"2\" points=\"{path}\"/>\
             <text x=\"2\" y=\"{:.0}\" font-size=\"11\">{}</text><text x=\"2\" y=\"{:.0}\" font-size=\"11\">0</text>\
             <text x=\"{PAD}\" y=\"{H}\" font-size=\"11\" dy=\"-4\">{}</text>\
             <text x=\"{:.0}\" y=\"{H}\" font-size=\"11\" dy=\"-4\" text-anchor=\"end\">{}</text>",
            PAD - 8.0,
            format_number(top),
            H - PAD,
            clock_time(first.0),
            W - PAD,
            clock_time(last.0)
        );
    } else {
        svg.push_str("<text x=\"10\" y=\"60\" font-size=\"12\">no data yet</text>");
    }
    svg.push_str("</svg></figure>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_paths_encoded() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
        assert_eq!(duration_text(59.6), "60 s");
        assert_eq!(duration_text(125.0), "2 min 5 s");
        assert_eq!(format_number(140.0), "140");
        assert_eq!(format_number(0.5), "0.50");
    }

    #[test]
    fn charts_are_inline_svg_without_script() {
        let e = |at_ms, desired| Entry {
            at_ms,
            metric: desired as f32 * 10.0,
            active: desired > 0,
            arrival_rate: f32::NAN,
            throughput: f32::NAN,
            recommendation: Some(desired),
            desired,
            why: Why::Recommendation,
            source_error: None,
            activation_pushed: false,
        };
        let (a, b) = (e(0, 1), e(30_000, 3));
        let svg = chart("desired replicas", &[&a, &b], |e| Some(f64::from(e.desired)), true);
        assert!(svg.starts_with("<figure>") && svg.contains("<svg") && svg.contains("<polyline"));
        assert!(!svg.contains("<script"));
        assert!(chart("metric", &[], |_| None, false).contains("no data yet"));
    }
}
