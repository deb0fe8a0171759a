//! What the Azure scalers share: clouds and endpoint suffixes, where credentials come from,
//! Storage ([`storage`]) and namespace ([`namespace`]) plumbing, Entra tokens ([`token`]) and
//! XML reading ([`xml`]).
//!
//! Credential resolution order (design: "Credentials"), for a trigger key such as `connection`:
//! 1. the value in the metadata: `connection`, or `connectionFromEnv` as KEDA delivers it (the
//!    resolved value under the same key);
//! 2. a named secret: `connectionRef: <name>` reads the file `<secrets dir>/<name>` (a mounted
//!    Kubernetes Secret or a Container Apps secret volume), re-read at every poll so a rotated
//!    secret is picked up without a restart;
//! 3. ebb's own workload identity or managed identity ([`ScalerContext::identity_for`]).

use crate::secret::fingerprint;
use crate::{ConfigError, Metadata, PollError, ScalerContext};

pub mod namespace;
pub mod storage;
pub mod token;
pub mod xml;

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
    pub fn resolve(&self, ctx: &ScalerContext) -> Result<String, PollError> {
        match self {
            SecretSource::Value(v) => Ok(v.clone()),
            SecretSource::Named(name) => ctx.read_secret(name),
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

/// The `Key=Value` pairs of a `;`-separated connection string: keys lowercased (they are
/// case-insensitive), values trimmed (a value may contain `=`). `Err(n)` names the first part
/// without `=` by its place (from 1), never by its text.
pub fn connection_pairs(s: &str) -> Result<Vec<(String, String)>, usize> {
    s.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .enumerate()
        .map(|(i, part)| {
            part.split_once('=').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())).ok_or(i + 1)
        })
        .collect()
}

fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
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
}
