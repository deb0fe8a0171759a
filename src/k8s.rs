//! The Kubernetes API (cargo feature `k8s`): KEDA TriggerAuthentications, and the ready replicas
//! of a ScaledObject's scale target for `policy: drain` ([`KubeReadyReplicas`]).
//!
//! [`KubeAuthRefs`] backs the trigger metadata key `authenticationRef`: it GETs the
//! `keda.sh/v1alpha1` TriggerAuthentication of that name in the ScaledObject's namespace, then
//! each Secret its `spec.secretTargetRef[]` entries name (same namespace), and hands
//! `parameter → value` to the engine.
//!
//! Only `spec.secretTargetRef` is supported. `spec.env`, `spec.podIdentity`,
//! `spec.hashiCorpVault`, `spec.azureKeyVault`, `spec.configMapTargetRef` and any other field
//! are ignored. Results are cached per (namespace, name) for [`CACHE_TTL`], so a rotated secret
//! reaches new triggers within a minute. Needs RBAC `get` on `triggerauthentications.keda.sh`
//! and `secrets` in the ScaledObjects' namespaces.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};

use crate::engine::AuthRefResolver;

/// How long one TriggerAuthentication's resolved parameters are reused.
pub const CACHE_TTL: Duration = Duration::from_secs(60);

type Params = HashMap<String, String>;

/// [`AuthRefResolver`] backed by the Kubernetes API. Errors name the object, never a value.
pub struct KubeAuthRefs {
    client: Client,
    cache: Mutex<HashMap<(String, String), (Instant, Params)>>,
}

impl KubeAuthRefs {
    pub fn new(client: Client) -> Self {
        Self { client, cache: Mutex::new(HashMap::new()) }
    }

    fn cached(&self, key: &(String, String)) -> Option<Params> {
        let mut cache = self.cache.lock().expect("auth ref cache lock");
        let now = Instant::now();
        cache.retain(|_, (at, _)| now.duration_since(*at) < CACHE_TTL);
        cache.get(key).map(|(_, p)| p.clone())
    }

    async fn fetch(&self, namespace: &str, name: &str) -> Result<Params, String> {
        let gvk = GroupVersionKind::gvk("keda.sh", "v1alpha1", "TriggerAuthentication");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "triggerauthentications");
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &ar);
        let ta =
            api.get_opt(name).await.map_err(|e| failure(&format!("TriggerAuthentication {namespace}/{name}"), &e))?;
        let Some(ta) = ta else {
            return Err(format!("TriggerAuthentication {namespace}/{name} not found"));
        };
        let refs = ta.data.get("spec").and_then(|s| s.get("secretTargetRef"));
        let refs = match refs {
            None | Some(serde_json::Value::Null) => return Ok(Params::new()),
            Some(serde_json::Value::Array(a)) => a,
            Some(_) => {
                return Err(format!("TriggerAuthentication {namespace}/{name}: spec.secretTargetRef is not a list"));
            }
        };
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let mut loaded: HashMap<String, Secret> = HashMap::new();
        let mut params = Params::new();
        for (i, r) in refs.iter().enumerate() {
            let field = |f: &str| r.get(f).and_then(serde_json::Value::as_str).filter(|s| !s.is_empty());
            let (Some(parameter), Some(secret), Some(key)) = (field("parameter"), field("name"), field("key")) else {
                return Err(format!(
                    "TriggerAuthentication {namespace}/{name}: spec.secretTargetRef[{i}] needs parameter, name and key"
                ));
            };
            if !loaded.contains_key(secret) {
                let s =
                    secrets.get_opt(secret).await.map_err(|e| failure(&format!("secret {namespace}/{secret}"), &e))?;
                let Some(s) = s else {
                    return Err(format!("secret {namespace}/{secret} not found"));
                };
                loaded.insert(secret.to_string(), s);
            }
            let s = &loaded[secret];
            let Some(bytes) = s.data.as_ref().and_then(|d| d.get(key)) else {
                return Err(format!("secret {namespace}/{secret}: key {key} missing"));
            };
            let Ok(value) = String::from_utf8(bytes.0.clone()) else {
                return Err(format!("secret {namespace}/{secret}: key {key} is not UTF-8"));
            };
            params.insert(parameter.to_string(), value);
        }
        Ok(params)
    }
}

/// A short reason for a failed GET. API errors carry the server's status, never a request
/// body, so no secret value can leak through them.
fn failure(what: &str, e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 => format!("{what}: forbidden (ebb needs RBAC get on it)"),
        kube::Error::Api(s) => format!("{what}: Kubernetes API answered {} {}", s.code, s.reason),
        _ => format!("{what}: Kubernetes API unreachable"),
    }
}

#[async_trait::async_trait]
impl AuthRefResolver for KubeAuthRefs {
    async fn resolve(&self, namespace: &str, name: &str) -> Result<Params, String> {
        let key = (namespace.to_string(), name.to_string());
        if let Some(p) = self.cached(&key) {
            return Ok(p);
        }
        let params = self.fetch(namespace, name).await?;
        self.cache.lock().expect("auth ref cache lock").insert(key, (Instant::now(), params.clone()));
        Ok(params)
    }
}

/// How often the watched scale targets are re-read.
pub const READY_REFRESH: Duration = Duration::from_secs(5);
/// A count older than this is not answered (three refreshes missed).
const READY_FRESH: Duration = Duration::from_secs(15);
/// A ScaledObject no trigger asked about for this long is no longer read.
const READY_FORGET: Duration = Duration::from_secs(600);

#[derive(Default)]
struct Watched {
    /// The last count read and when.
    ready: Option<(Instant, u32)>,
    asked: Option<Instant>,
    /// The last failure, logged once until it changes.
    failed: Option<String>,
}

/// [`ReadyReplicas`](crate::engine::ReadyReplicas) backed by the Kubernetes API: for each
/// ScaledObject a `policy: drain` trigger asks about, GETs the `keda.sh/v1alpha1` ScaledObject,
/// then its `spec.scaleTargetRef` (a `Deployment` or `StatefulSet` of `apps/v1`, KEDA's default
/// kind being `Deployment`), and keeps `status.readyReplicas`. Needs RBAC `get` on
/// `scaledobjects.keda.sh` and on `deployments` and `statefulsets` in the bound namespaces.
/// [`Self::refresh`] runs in the background every [`READY_REFRESH`]; answers never wait on it.
pub struct KubeReadyReplicas {
    client: Client,
    watched: Mutex<HashMap<(String, String), Watched>>,
}

impl KubeReadyReplicas {
    pub fn new(client: Client) -> Self {
        Self { client, watched: Mutex::new(HashMap::new()) }
    }

    /// Re-reads every watched ScaledObject's scale target once (forgetting those not asked
    /// about for [`READY_FORGET`]).
    pub async fn refresh(&self) {
        let keys: Vec<(String, String)> = {
            let mut w = self.watched.lock().expect("ready replicas lock");
            let now = Instant::now();
            w.retain(|_, v| v.asked.is_some_and(|t| now.duration_since(t) < READY_FORGET));
            w.keys().cloned().collect()
        };
        for (namespace, name) in keys {
            let read = self.read(&namespace, &name).await;
            let mut w = self.watched.lock().expect("ready replicas lock");
            let Some(entry) = w.get_mut(&(namespace.clone(), name.clone())) else { continue };
            match read {
                Ok(n) => {
                    entry.ready = Some((Instant::now(), n));
                    entry.failed = None;
                }
                Err(reason) => {
                    if entry.failed.as_deref() != Some(reason.as_str()) {
                        tracing::warn!(namespace, scaledobject = name, %reason, "reading the ready replicas failed");
                    }
                    entry.failed = Some(reason);
                }
            }
        }
    }

    /// Runs [`Self::refresh`] every [`READY_REFRESH`] until the task is dropped.
    pub fn spawn_refresh(self: &std::sync::Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(READY_REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.refresh().await;
            }
        })
    }

    async fn read(&self, namespace: &str, name: &str) -> Result<u32, String> {
        let gvk = GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "scaledobjects");
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &ar);
        let what = format!("ScaledObject {namespace}/{name}");
        let so = api.get_opt(name).await.map_err(|e| failure(&what, &e))?.ok_or_else(|| format!("{what} not found"))?;
        let target = so.data.get("spec").and_then(|s| s.get("scaleTargetRef"));
        let field =
            |f: &str| target.and_then(|t| t.get(f)).and_then(serde_json::Value::as_str).filter(|s| !s.is_empty());
        let target_name = field("name").ok_or_else(|| format!("{what}: spec.scaleTargetRef.name missing"))?;
        let kind = field("kind").unwrap_or("Deployment");
        let api_version = field("apiVersion").unwrap_or("apps/v1");
        let plural = match (api_version, kind) {
            ("apps/v1", "Deployment") => "deployments",
            ("apps/v1", "StatefulSet") => "statefulsets",
            _ => return Err(format!("{what}: scale target {api_version} {kind} is not a Deployment or StatefulSet")),
        };
        let gvk = GroupVersionKind::gvk("apps", "v1", kind);
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &ar);
        let what = format!("{kind} {namespace}/{target_name}");
        let target = api.get_opt(target_name).await.map_err(|e| failure(&what, &e))?;
        let target = target.ok_or_else(|| format!("{what} not found"))?;
        // Absent while no pod is ready, as the API server omits zero values.
        let ready = target.data.get("status").and_then(|s| s.get("readyReplicas")).and_then(serde_json::Value::as_u64);
        Ok(ready.unwrap_or(0).min(u64::from(u32::MAX)) as u32)
    }
}

impl crate::engine::ReadyReplicas for KubeReadyReplicas {
    fn ready(&self, namespace: &str, scaled_object: &str) -> Option<u32> {
        let mut w = self.watched.lock().expect("ready replicas lock");
        let entry = w.entry((namespace.to_string(), scaled_object.to_string())).or_default();
        let now = Instant::now();
        entry.asked = Some(now);
        entry.ready.filter(|(at, _)| now.duration_since(*at) < READY_FRESH).map(|(_, n)| n)
    }
}
