//! What the Azure scalers share: clouds and endpoint suffixes, where credentials come from, and
//! ebb's own Entra ID identity.
//!
//! Credential resolution order (design: "Credentials"), for a trigger key such as `connection`:
//! 1. the value in the metadata: `connection`, or `connectionFromEnv` as KEDA delivers it (the
//!    resolved value under the same key);
//! 2. a named secret: `connectionRef: <name>` reads the file `<secrets dir>/<name>` (a mounted
//!    Kubernetes Secret or a Container Apps secret volume), re-read at every poll so a rotated
//!    secret is picked up without a restart;
//! 3. ebb's own workload identity or managed identity ([`identity`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use azure_core::credentials::TokenCredential;

use crate::{ConfigError, Metadata, PollError};

/// Sovereign clouds KEDA knows (`pkg/scalers/azure/azure_cloud_environment.go`), plus `Private`,
/// which needs `endpointSuffix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    Public,
    UsGovernment,
    China,
    Private,
}

/// Which service an endpoint suffix is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `<account>.queue.<suffix>`, `<account>.blob.<suffix>`.
    Storage,
    /// `<namespace>.<suffix>` for Service Bus and Event Hubs.
    ServiceBus,
}

impl Cloud {
    /// KEDA's `cloud` key: case-insensitive names, default `AzurePublicCloud`.
    pub fn parse(md: &Metadata<'_>) -> Result<Cloud, ConfigError> {
        let Some(v) = md.get("cloud") else { return Ok(Cloud::Public) };
        match v.to_ascii_lowercase().as_str() {
            "azurepubliccloud" => Ok(Cloud::Public),
            "azureusgovernmentcloud" => Ok(Cloud::UsGovernment),
            "azurechinacloud" => Ok(Cloud::China),
            "private" => Ok(Cloud::Private),
            _ => Err(ConfigError::new(
                "cloud",
                format!(
                    "{v:?} is not a known cloud (AzurePublicCloud, AzureUSGovernmentCloud, AzureChinaCloud, Private)"
                ),
            )),
        }
    }

    /// The endpoint suffix for `service`: the cloud's own, or `endpointSuffix` when the cloud
    /// is `Private` (required then, as in KEDA). `key` is the metadata key holding the suffix
    /// (`endpointSuffix`, or `storageEndpointSuffix` for Event Hubs checkpoints).
    pub fn suffix(self, md: &Metadata<'_>, service: Service, key: &str) -> Result<String, ConfigError> {
        let known = match (self, service) {
            (Cloud::Public, Service::Storage) => "core.windows.net",
            (Cloud::UsGovernment, Service::Storage) => "core.usgovcloudapi.net",
            (Cloud::China, Service::Storage) => "core.chinacloudapi.cn",
            (Cloud::Public, Service::ServiceBus) => "servicebus.windows.net",
            (Cloud::UsGovernment, Service::ServiceBus) => "servicebus.usgovcloudapi.net",
            (Cloud::China, Service::ServiceBus) => "servicebus.chinacloudapi.cn",
            (Cloud::Private, _) => {
                return md
                    .get(key)
                    .map(|s| s.trim_start_matches('.').to_string())
                    .ok_or_else(|| ConfigError::new(key, "is required when cloud is Private"));
            }
        };
        Ok(known.to_string())
    }
}

/// Where a trigger's secret comes from. `Debug` never shows a value.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The value arrived in the metadata.
    Value(String),
    /// A named secret, read from the secrets directory at every poll.
    Named(String),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Value(_) => f.write_str("Value(***)"),
            SecretSource::Named(n) => write!(f, "Named({n:?})"),
        }
    }
}

impl SecretSource {
    /// `key` (or `<key>FromEnv`) as a value, else `<key>Ref` as a named secret, else `None`.
    pub fn from_metadata(md: &Metadata<'_>, key: &str) -> Result<Option<SecretSource>, ConfigError> {
        if let Some(v) = md.get_untrimmed(key) {
            return Ok(Some(SecretSource::Value(v.trim().to_string())));
        }
        let ref_key = format!("{key}Ref");
        match md.get(&ref_key) {
            Some(name) if valid_secret_name(name) => Ok(Some(SecretSource::Named(name.to_string()))),
            Some(_) => Err(ConfigError::new(
                ref_key,
                "must be a secret name (letters, digits, '-', '_', '.'; no path separators)",
            )),
            None => Ok(None),
        }
    }

    /// The secret's value now.
    pub fn resolve(&self) -> Result<String, PollError> {
        match self {
            SecretSource::Value(v) => Ok(v.clone()),
            SecretSource::Named(name) => read_named_secret(name),
        }
    }

    /// A label for source keys and logs: never the value.
    pub fn label(&self) -> String {
        match self {
            SecretSource::Value(v) => format!("value:{}", fingerprint(v)),
            SecretSource::Named(n) => format!("ref:{n}"),
        }
    }
}

fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

static SECRETS_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Sets the directory named secrets are read from (once, at start-up; `ebb serve
/// --secrets-dir`). Default: `$EBB_SECRETS_DIR`, else `/var/run/secrets/ebb`.
pub fn set_secrets_dir(dir: PathBuf) {
    let _ = SECRETS_DIR.set(dir);
}

pub fn secrets_dir() -> &'static Path {
    SECRETS_DIR.get_or_init(|| {
        std::env::var_os("EBB_SECRETS_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/run/secrets/ebb"))
    })
}

fn read_named_secret(name: &str) -> Result<String, PollError> {
    let path = secrets_dir().join(name);
    std::fs::read_to_string(&path).map(|s| s.trim().to_string()).map_err(|e| {
        PollError::Credential(format!("named secret {name:?} cannot be read from {}: {e}", path.display()))
    })
}

/// A short, salted fingerprint of a secret for source keys: equal secrets give equal keys in
/// this process, and a key seen in a log reveals nothing.
pub fn fingerprint(secret: &str) -> String {
    use sha2::{Digest, Sha256};
    static SALT: OnceLock<[u8; 16]> = OnceLock::new();
    let salt = SALT.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut out = [0u8; 16];
        for chunk in out.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
        out
    });
    let digest = Sha256::new().chain_update(salt).chain_update(secret.as_bytes()).finalize();
    crate::fingerprint_text(&digest)
}

/// ebb's own identity for a token that will be sent to `target`. The engine has checked the
/// trigger's declared uses against the operator's policy ([`crate::trust`]); this checks again,
/// at the last moment, that the token goes over https to a service host name.
pub fn identity_for(target: &url::Url) -> Result<Arc<dyn TokenCredential>, PollError> {
    crate::trust::check_token_target(target)?;
    identity()
}

/// ebb's own Entra ID identity, shared by every source (the credentials cache tokens per scope):
/// workload identity when `AZURE_FEDERATED_TOKEN_FILE` is set, else managed identity
/// (user-assigned when `AZURE_CLIENT_ID` is set). A failure is not cached: the next poll retries.
fn identity() -> Result<Arc<dyn TokenCredential>, PollError> {
    static CREDENTIAL: Mutex<Option<Arc<dyn TokenCredential>>> = Mutex::new(None);
    let mut slot = CREDENTIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = slot.as_ref() {
        return Ok(c.clone());
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let credential: Arc<dyn TokenCredential> = if env("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        azure_identity::WorkloadIdentityCredential::new(None)
            .map_err(|e| PollError::Credential(format!("workload identity: {e}")))?
    } else {
        let options = azure_identity::ManagedIdentityCredentialOptions {
            user_assigned_id: env("AZURE_CLIENT_ID").map(azure_identity::UserAssignedId::ClientId),
            ..Default::default()
        };
        azure_identity::ManagedIdentityCredential::new(Some(options))
            .map_err(|e| PollError::Credential(format!("managed identity: {e}")))?
    };
    *slot = Some(credential.clone());
    Ok(credential)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn md(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn clouds_and_suffixes_follow_keda() {
        let m = md(&[]);
        let m = Metadata::new(&m);
        assert_eq!(
            Cloud::parse(&m).unwrap().suffix(&m, Service::Storage, "endpointSuffix").unwrap(),
            "core.windows.net"
        );
        let g = md(&[("cloud", "AzureUSGovernmentCloud")]);
        let g = Metadata::new(&g);
        assert_eq!(
            Cloud::parse(&g).unwrap().suffix(&g, Service::ServiceBus, "endpointSuffix").unwrap(),
            "servicebus.usgovcloudapi.net"
        );
        // Private requires endpointSuffix (KEDA: "endpointSuffix is required for Private cloud").
        let p = md(&[("cloud", "Private")]);
        let p = Metadata::new(&p);
        let e = Cloud::parse(&p).unwrap().suffix(&p, Service::Storage, "endpointSuffix").unwrap_err();
        assert_eq!(e.key, "endpointSuffix");
        let p = md(&[("cloud", "private"), ("endpointSuffix", "queue.example.local")]);
        let p = Metadata::new(&p);
        assert_eq!(
            Cloud::parse(&p).unwrap().suffix(&p, Service::Storage, "endpointSuffix").unwrap(),
            "queue.example.local"
        );
        let bad = md(&[("cloud", "Mars")]);
        assert_eq!(Cloud::parse(&Metadata::new(&bad)).unwrap_err().key, "cloud");
    }

    #[test]
    fn secret_sources_in_order_and_never_shown() {
        let m = md(&[("connectionFromEnv", "Endpoint=sb://x/;SharedAccessKey=s3cr3t"), ("connectionRef", "sb")]);
        let s = SecretSource::from_metadata(&Metadata::new(&m), "connection").unwrap().unwrap();
        assert!(matches!(s, SecretSource::Value(_)), "metadata value wins over the named secret");
        assert!(!format!("{s:?}{}", s.label()).contains("s3cr3t"));
        let m = md(&[("connectionRef", "orders-sb")]);
        let s = SecretSource::from_metadata(&Metadata::new(&m), "connection").unwrap().unwrap();
        assert_eq!(s, SecretSource::Named("orders-sb".into()));
        for bad in ["../etc/passwd", "a/b", ".."] {
            let m = md(&[("connectionRef", bad)]);
            assert_eq!(SecretSource::from_metadata(&Metadata::new(&m), "connection").unwrap_err().key, "connectionRef");
        }
        assert_eq!(SecretSource::from_metadata(&Metadata::new(&md(&[])), "connection").unwrap(), None);
    }

    #[test]
    fn named_secrets_are_read_at_resolve_time() {
        let dir = std::env::temp_dir().join(format!("ebb-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        set_secrets_dir(dir.clone());
        if secrets_dir() != dir {
            return; // another test in this process set it first; the lookup rules are covered there
        }
        std::fs::write(dir.join("conn"), "first\n").unwrap();
        let s = SecretSource::Named("conn".into());
        assert_eq!(s.resolve().unwrap(), "first");
        std::fs::write(dir.join("conn"), "rotated").unwrap();
        assert_eq!(s.resolve().unwrap(), "rotated");
        let e = SecretSource::Named("missing".into()).resolve().unwrap_err();
        assert_eq!(e.kind(), "credential");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn fingerprints_match_for_equal_secrets_only() {
        assert_eq!(fingerprint("a"), fingerprint("a"));
        assert_ne!(fingerprint("a"), fingerprint("b"));
        assert_eq!(fingerprint("a").len(), 19);
    }
}
