//! KEDA TriggerAuthentications read from the Kubernetes API (cargo feature `k8s`).
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

    /// Uses the in-cluster service account or the local kubeconfig
    /// ([`kube::Client::try_default`]).
    pub async fn from_env() -> Result<Self, kube::Error> {
        Ok(Self::new(Client::try_default().await?))
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
