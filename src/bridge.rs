//! The Container Apps bridge: ScaledObjects declared in ebb's config file, read over HTTP by a
//! scale rule type that Container Apps supports natively.
//!
//! Container Apps' `external` scale type does not reliably reach external scalers
//! (see docs/container-apps.md), so ebb also answers the two request shapes of KEDA's built-in
//! scalers that ACA runs for any app:
//! - `metrics-api`: `GET /api/v1/scaledobjects/{namespace}/{name}` → JSON with `value` (what
//!   GetMetrics would return), `active`, `desiredReplicas`; the rule reads
//!   `valueLocation: value`.
//! - `prometheus`: `GET /api/v1/query?query=ebb_scaledobject_value{namespace="…",name="…"}`
//!   (plus KEDA's `&time=`) → a Prometheus instant-vector answer with that value.
//!
//! Both go through the same engine as the gRPC door ([`Engine::resolve`], [`Engine::decide`]):
//! the same cache, activation and replicas logic, the same one poll per source. Only
//! ScaledObjects declared in the config are served: the HTTP port takes no metadata from callers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, EngineError};

/// The metric name of the Prometheus-shaped answer.
pub const METRIC: &str = "ebb_scaledobject_value";

/// ebb's config file (`serve --config`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub scaled_objects: Vec<ScaledObject>,
    /// Who may use ebb's identity and secrets (gRPC and bridge alike); see [`crate::access`].
    #[serde(default)]
    pub access: crate::access::AccessPolicy,
}

/// One ScaledObject served by the bridge: a name and KEDA trigger metadata (with `scalerType`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScaledObject {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub metadata: HashMap<String, String>,
}

fn default_namespace() -> String {
    "default".into()
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("{path}: ScaledObject {namespace}/{name} is declared twice")]
    Duplicate { path: String, namespace: String, name: String },
}

impl Config {
    /// Reads and checks a config file. Metadata is checked by the engine at start-up.
    pub fn load(path: &Path) -> Result<Self, BridgeConfigError> {
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| BridgeConfigError::Read { path: shown.clone(), source })?;
        Self::parse(&text).map_err(|e| match e {
            BridgeConfigError::Parse { reason, .. } => BridgeConfigError::Parse { path: shown.clone(), reason },
            BridgeConfigError::Duplicate { namespace, name, .. } => {
                BridgeConfigError::Duplicate { path: shown.clone(), namespace, name }
            }
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, BridgeConfigError> {
        let cfg: Config = serde_saphyr::from_str(text)
            .map_err(|e| BridgeConfigError::Parse { path: String::new(), reason: e.to_string() })?;
        cfg.access.validate().map_err(|reason| BridgeConfigError::Parse { path: String::new(), reason })?;
        let mut seen = std::collections::HashSet::new();
        for so in &cfg.scaled_objects {
            if !seen.insert((so.namespace.as_str(), so.name.as_str())) {
                return Err(BridgeConfigError::Duplicate {
                    path: String::new(),
                    namespace: so.namespace.clone(),
                    name: so.name.clone(),
                });
            }
        }
        Ok(cfg)
    }
}

/// The bridge's state: the declared ScaledObjects and the engine.
#[derive(Clone)]
pub struct Bridge {
    engine: Engine,
    objects: Arc<HashMap<(String, String), ScaledObject>>,
}

/// What `GET /api/v1/scaledobjects/{namespace}/{name}` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    pub namespace: String,
    pub name: String,
    /// What GetMetrics returns: the metric (`outputMode: metric`) or the desired replicas.
    pub value: f64,
    /// What IsActive returns.
    pub active: bool,
    pub desired_replicas: u32,
    pub metric_name: String,
    /// The HPA target GetMetricSpec returns.
    pub target: f64,
}

impl Bridge {
    pub fn new(engine: Engine, config: &Config) -> Self {
        let objects =
            config.scaled_objects.iter().map(|so| ((so.namespace.clone(), so.name.clone()), so.clone())).collect();
        Self { engine, objects: Arc::new(objects) }
    }

    /// Resolves every declared ScaledObject, so invalid metadata stops start-up with the key
    /// at fault and the sources start polling before the first scale rule asks.
    pub async fn start(&self) -> Result<(), String> {
        for so in self.objects.values() {
            self.engine
                .resolve_declared(&so.namespace, &so.name, &so.metadata, None)
                .await
                .map_err(|e| format!("ScaledObject {}/{}: {e}", so.namespace, so.name))?;
        }
        Ok(())
    }

    async fn answer(&self, namespace: &str, name: &str, peer: Option<SocketAddr>) -> Result<Answer, BridgeError> {
        let so = self
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .ok_or_else(|| BridgeError::Unknown(format!("{namespace}/{name}")))?;
        let t = self.engine.resolve_declared(&so.namespace, &so.name, &so.metadata, peer).await?;
        let d = self.engine.decide(&t).await?;
        Ok(Answer {
            namespace: so.namespace.clone(),
            name: so.name.clone(),
            value: d.metric,
            active: d.active,
            desired_replicas: d.desired_replicas,
            metric_name: t.metric_name.clone(),
            target: t.target(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
enum BridgeError {
    #[error("no ScaledObject {0} in ebb's config")]
    Unknown(String),
    #[error("{0}")]
    BadQuery(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl BridgeError {
    fn status(&self) -> StatusCode {
        match self {
            BridgeError::Unknown(_) => StatusCode::NOT_FOUND,
            BridgeError::BadQuery(_)
            | BridgeError::Engine(EngineError::InvalidMetadata(_) | EngineError::MetadataTooLarge { .. }) => {
                StatusCode::BAD_REQUEST
            }
            BridgeError::Engine(EngineError::LimitReached { .. }) => StatusCode::TOO_MANY_REQUESTS,
            BridgeError::Engine(EngineError::PermissionDenied(_)) => StatusCode::FORBIDDEN,
            // Never a 200 with a made-up value: KEDA keeps its last state (or its fallback).
            BridgeError::Engine(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The bridge routes, merged into the HTTP door.
pub fn router(bridge: Bridge) -> Router {
    Router::new()
        .route("/api/v1/scaledobjects/{namespace}/{name}", get(metrics_api))
        .route("/api/v1/query", get(prometheus_query))
        .with_state(bridge)
}

async fn metrics_api(
    State(b): State<Bridge>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    match b.answer(&namespace, &name, Some(peer)).await {
        Ok(a) => Json(a).into_response(),
        Err(e) => (e.status(), Json(serde_json::json!({ "error": e.to_string() }))).into_response(),
    }
}

async fn prometheus_query(
    State(b): State<Bridge>,
    Query(q): Query<HashMap<String, String>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let result = match q.get("query").map(|s| parse_selector(s)) {
        None => Err(BridgeError::BadQuery("missing query parameter".into())),
        Some(Err(e)) => Err(BridgeError::BadQuery(e)),
        Some(Ok((namespace, name))) => b.answer(&namespace, &name, Some(peer)).await,
    };
    match result {
        Ok(a) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
            Json(serde_json::json!({
                "status": "success",
                "data": {
                    "resultType": "vector",
                    "result": [{
                        "metric": { "__name__": METRIC, "namespace": a.namespace, "name": a.name },
                        "value": [now, a.value.to_string()],
                    }],
                },
            }))
            .into_response()
        }
        Err(e) => {
            let kind = if e.status() == StatusCode::SERVICE_UNAVAILABLE { "unavailable" } else { "bad_data" };
            (e.status(), Json(serde_json::json!({ "status": "error", "errorType": kind, "error": e.to_string() })))
                .into_response()
        }
    }
}

/// Reads `ebb_scaledobject_value{namespace="ns",name="so"}` (labels in any order, `namespace`
/// optional): the only query the bridge answers.
pub fn parse_selector(query: &str) -> Result<(String, String), String> {
    let usage = || format!("expected {METRIC}{{namespace=\"…\",name=\"…\"}}, got {query:?}");
    let q = query.trim();
    let rest = q.strip_prefix(METRIC).ok_or_else(usage)?.trim();
    let inner = rest.strip_prefix('{').and_then(|r| r.strip_suffix('}')).ok_or_else(usage)?;
    let (mut namespace, mut name) = (None, None);
    for pair in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(usage)?;
        let v = v.trim().strip_prefix('"').and_then(|v| v.strip_suffix('"')).ok_or_else(usage)?;
        match k.trim() {
            "namespace" => namespace = Some(v.to_string()),
            "name" => name = Some(v.to_string()),
            _ => return Err(usage()),
        }
    }
    Ok((namespace.unwrap_or_else(default_namespace), name.ok_or_else(usage)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_rejects_duplicates_and_unknown_keys() {
        let cfg = Config::parse(
            "scaledObjects:\n  - name: orders\n    metadata:\n      scalerType: prometheus\n      threshold: \"5\"\n",
        )
        .unwrap();
        assert_eq!(cfg.scaled_objects[0].namespace, "default");
        assert_eq!(cfg.scaled_objects[0].metadata["threshold"], "5");
        let dup = "scaledObjects:\n  - {name: a, metadata: {}}\n  - {name: a, namespace: default, metadata: {}}\n";
        assert!(matches!(Config::parse(dup), Err(BridgeConfigError::Duplicate { .. })));
        assert!(matches!(Config::parse("scaledObject: []\n"), Err(BridgeConfigError::Parse { .. })));
        assert_eq!(Config::parse("").unwrap_or_default(), Config::default());
    }

    #[test]
    fn selectors() {
        let ok = |q: &str| parse_selector(q).unwrap();
        assert_eq!(ok(r#"ebb_scaledobject_value{namespace="apps",name="orders"}"#), ("apps".into(), "orders".into()));
        assert_eq!(ok(r#" ebb_scaledobject_value{ name="orders" } "#), ("default".into(), "orders".into()));
        for bad in [
            "up",
            r#"ebb_scaledobject_value{job="x"}"#,
            "ebb_scaledobject_value",
            r#"ebb_scaledobject_value{name=orders}"#,
        ] {
            assert!(parse_selector(bad).is_err(), "{bad}");
        }
    }
}
