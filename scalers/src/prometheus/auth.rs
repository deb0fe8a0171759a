//! `authModes` (bearer, basic, tls, custom headers) and Azure Monitor managed Prometheus scopes.

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName};
use url::Url;

use super::{AZURE_PROMETHEUS_CLOUDS, ClientTls, Pem, sensitive_header};
use crate::secret::{Fingerprint, Secret, check_certs, check_key};
use crate::{ConfigError, ConfigErrors, Metadata};

/// What `authModes` turned on.
#[derive(Default)]
pub(super) struct Auth {
    /// The modes, in a fixed order (`bearer`, `basic`, `tls`, `custom`).
    pub(super) modes: Vec<&'static str>,
    pub(super) client_tls: Option<ClientTls>,
}

const AUTH_MODES: &[&str] = &["bearer", "basic", "tls", "custom"];

/// Reads `authModes` and each mode's keys (KEDA `authentication.Config.Validate`); adds the
/// static auth headers to `headers` and the secrets to `fp`. Every problem is reported.
pub(super) fn auth(md: &Metadata<'_>, fp: &mut Fingerprint, headers: &mut HeaderMap) -> Result<Auth, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    let modes_key = if md.get("authModes").is_some() { "authModes" } else { "authMode" };
    let mut modes: Vec<&'static str> = Vec::new();
    for item in md.get(modes_key).unwrap_or_default().split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match AUTH_MODES.iter().find(|m| m.eq_ignore_ascii_case(item)) {
            Some(m) => modes.push(m),
            None if item.eq_ignore_ascii_case("oauth") || item.eq_ignore_ascii_case("apiKey") => {
                errs.push(ConfigError::new(modes_key, format!("{item:?} is not supported by ebb's prometheus scaler")))
            }
            None => errs.push(ConfigError::new(modes_key, format!("{item:?} is not one of {}", AUTH_MODES.join(", ")))),
        }
    }
    modes.sort_by_key(|m| AUTH_MODES.iter().position(|a| a == m));
    modes.dedup();
    let on = |m: &str| modes.contains(&m);
    if on("bearer") && on("basic") {
        // KEDA: `exclusiveSet=bearer;basic;oauth`.
        errs.push(ConfigError::new(modes_key, "bearer and basic cannot be combined"));
    }

    if on("bearer") {
        let key = if md.get("bearerToken").is_some() { "bearerToken" } else { "token" };
        match md.get(key) {
            None => errs.push(ConfigError::new("bearerToken", "required when authModes includes bearer")),
            Some(token) => match sensitive_header(&format!("Bearer {token}")) {
                None => errs.push(ConfigError::new(key, "contains characters not allowed in an HTTP header")),
                Some(v) => {
                    fp.add("bearer", token);
                    headers.insert(AUTHORIZATION, v);
                }
            },
        }
    }
    if on("basic") {
        match md.get("username") {
            None => errs.push(ConfigError::new("username", "required when authModes includes basic")),
            Some(user) => {
                // Go's `SetBasicAuth(user, "")` when no password is given, as KEDA allows.
                let password = md.get("password").unwrap_or_default();
                let encoded = azure_core::base64::encode(format!("{user}:{password}"));
                let v = sensitive_header(&format!("Basic {encoded}")).expect("base64 is a valid header value");
                fp.add("username", user);
                fp.add("password", password);
                headers.insert(AUTHORIZATION, v);
            }
        }
    }
    let mut client_tls = None;
    if on("tls") {
        let cert = md.get("cert");
        let key = md.get("key");
        if cert.is_none() {
            errs.push(ConfigError::new("cert", "required when authModes includes tls"));
        }
        if key.is_none() {
            errs.push(ConfigError::new("key", "required when authModes includes tls"));
        }
        let cert_ok = cert.map(|c| check_certs("cert", c).map_err(|e| errs.push(e)).is_ok());
        let key_ok = key.map(|k| check_key(k).map_err(|e| errs.push(e)).is_ok());
        if let (Some(cert), Some(key), Some(true), Some(true)) = (cert, key, cert_ok, key_ok) {
            client_tls = Some(ClientTls { cert: Pem(cert.to_owned()), key: Secret(key.to_owned()) });
        }
    }
    if on("custom") {
        let name = md.get("customAuthHeader");
        let value = md.get("customAuthValue");
        if name.is_none() {
            errs.push(ConfigError::new("customAuthHeader", "required when authModes includes custom"));
        }
        if value.is_none() {
            errs.push(ConfigError::new("customAuthValue", "required when authModes includes custom"));
        }
        let name = name.and_then(|n| {
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| {
                    errs.push(ConfigError::new("customAuthHeader", format!("{n:?} is not a valid HTTP header name")))
                })
                .ok()
        });
        let header_value = value.and_then(|v| {
            let h = sensitive_header(v);
            if h.is_none() {
                errs.push(ConfigError::new("customAuthValue", "contains characters not allowed in an HTTP header"));
            }
            h
        });
        if let (Some(name), Some(header_value), Some(value)) = (name, header_value, value) {
            fp.add("custom-header", name.as_str());
            fp.add("custom-value", value);
            // Set after bearer/basic, so a custom `Authorization` header wins.
            headers.insert(name, header_value);
        }
    }
    errs.into_result()?;
    Ok(Auth { modes, client_tls })
}

/// The Azure token scope, when Azure Monitor managed Prometheus auth applies.
pub(super) const AZURE_RESOURCE_URL: &str = "azureManagedPrometheusResourceURL";

pub(super) fn azure_scope(md: &Metadata<'_>, url: &Url, has_auth_modes: bool) -> Result<Option<String>, ConfigError> {
    const KEY: &str = AZURE_RESOURCE_URL;
    if let Some(scope) = md.get(KEY) {
        if has_auth_modes {
            // KEDA: "pod identity cannot be enabled with other auth types".
            return Err(ConfigError::new(KEY, "cannot be combined with authModes"));
        }
        return Ok(Some(scope.to_owned()));
    }
    if has_auth_modes {
        return Ok(None);
    }
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    Ok(AZURE_PROMETHEUS_CLOUDS.iter().find(|(suffix, _)| host.ends_with(suffix)).map(|(_, scope)| (*scope).to_owned()))
}
