//! What Service Bus and Event Hubs share: both are reached through a namespace's management
//! API (`https://<namespace>.servicebus.windows.net`), with a SAS from a connection string or an
//! Entra token, and both answer errors as `<Error><Code>…</Code><Detail>…</Detail></Error>`.

use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::header::HeaderValue;
use sha2::Sha256;

use crate::PollError;
use crate::secret::{Secret, scrub};

/// Lifetime of a SAS token ebb signs from a shared access key.
pub const SAS_LIFETIME: Duration = Duration::from_secs(3600);

/// How a connection string authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SasCredential {
    /// A shared access key: ebb signs tokens.
    Key { name: String, key: Secret },
    /// A ready token (`SharedAccessSignature sr=…`), sent as is.
    Token(Secret),
}

/// A parsed Service Bus connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceConnection {
    /// `host[:port]` of `Endpoint=`.
    pub host: String,
    pub credential: SasCredential,
    pub entity_path: Option<String>,
}

impl NamespaceConnection {
    /// Parses `k=v;k=v` (keys case-insensitive, values may contain `=`). The reason never
    /// carries a value.
    pub fn parse(s: &str) -> Result<NamespaceConnection, String> {
        let (mut endpoint, mut key_name, mut key, mut sas, mut entity_path) = (None, None, None, None, None);
        let pairs = super::connection_pairs(s).map_err(|_| {
            "is not a Service Bus connection string (expected key=value pairs separated by ';')".to_owned()
        })?;
        for (k, v) in pairs {
            match k.as_str() {
                "endpoint" => endpoint = Some(v),
                "sharedaccesskeyname" => key_name = Some(v),
                "sharedaccesskey" => key = Some(v),
                "sharedaccesssignature" => sas = Some(v),
                "entitypath" => entity_path = Some(v),
                _ => {} // e.g. UseDevelopmentEmulator, TransportType: not used by management reads
            }
        }
        let endpoint = endpoint.ok_or("connection string has no Endpoint")?;
        let host = endpoint_host(&endpoint).ok_or("connection string Endpoint is not of the form sb://<host>/")?;
        let credential = match (key_name, key, sas) {
            (_, _, Some(token)) => {
                if !token.starts_with("SharedAccessSignature ") || HeaderValue::from_str(&token).is_err() {
                    return Err(
                        "connection string SharedAccessSignature is not a SAS token (SharedAccessSignature sr=…)"
                            .into(),
                    );
                }
                SasCredential::Token(Secret(token))
            }
            (Some(name), Some(key), None) if !name.is_empty() && !key.is_empty() => {
                SasCredential::Key { name, key: Secret(key) }
            }
            _ => {
                return Err("connection string needs SharedAccessKeyName and SharedAccessKey, \
                            or SharedAccessSignature"
                    .into());
            }
        };
        Ok(NamespaceConnection { host, credential, entity_path })
    }
}

/// `host[:port]` of `sb://host[:port]/…` (any scheme is accepted and dropped).
pub fn endpoint_host(endpoint: &str) -> Option<String> {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or_default();
    let ok =
        !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '[' | ']'));
    ok.then(|| host.to_ascii_lowercase())
}

/// `http` for a loopback host (the tests' wire double), else `https`.
pub fn scheme_for(host: &str) -> &'static str {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit())).map_or(host, |(h, _)| h)
    };
    let loopback = name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback { "http" } else { "https" }
}

/// `application/x-www-form-urlencoded` escaping, as SAS tokens use.
pub fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A SAS token for `uri`, valid until `expiry` (Unix seconds): HMAC-SHA256 with the key's
/// UTF-8 bytes over `urlenc(uri) + "\n" + expiry`.
pub fn sas_token(uri: &str, key_name: &str, key: &str, expiry: u64) -> String {
    let sr = form_encode(uri);
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("{sr}\n{expiry}").as_bytes());
    use base64::Engine as _;
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("SharedAccessSignature sr={sr}&sig={}&se={expiry}&skn={}", form_encode(&sig), form_encode(key_name))
}

/// Percent-encodes an entity path (queue names may hold `/`, which is kept).
pub fn path_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `Authorization` value for `resource` (`<base>/` or `<base>/<hub>`) and the strings an
/// error text must never contain: a SAS signed now from a shared access key, or the ready
/// token as given.
pub fn sas_authorization(credential: &SasCredential, resource: &str) -> Result<(HeaderValue, Vec<String>), PollError> {
    let (token, secrets) = match credential {
        SasCredential::Key { name, key } => {
            let token = sas_token(resource, name, &key.0, unix_now() + SAS_LIFETIME.as_secs());
            let sig = token.split("&sig=").nth(1).and_then(|s| s.split('&').next()).unwrap_or_default();
            let secrets = vec![key.0.clone(), sig.to_owned()];
            (token, secrets)
        }
        SasCredential::Token(t) => (t.0.clone(), vec![t.0.clone()]),
    };
    Ok((crate::http::sensitive(&token)?, secrets))
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A Service Bus / Event Hubs management error answer for the caller. The answers are
/// `<Error><Code>401</Code><Detail>…</Detail></Error>`: the numeric `<Code>`, the media type
/// and the size ([`crate::body_summary`]), never the `<Detail>` text nor other bytes (the
/// connection string, hence the host, is the caller's; the answer may be any internal page).
pub fn error_detail(content_type: Option<&str>, body: &str) -> String {
    let summary = crate::body_summary(content_type, body.len());
    let code = super::xml::element_text(body, "Code")
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty() && c.len() <= 9 && c.bytes().all(|b| b.is_ascii_digit()));
    match code {
        Some(code) => format!("error code {code} ({summary})"),
        None => summary,
    }
}

/// A 2xx answer that is not the expected ATOM: what went wrong, the media type and the size;
/// the body goes to ebb's log only.
pub fn malformed_atom(
    scaler: &str,
    what: &str,
    error: &str,
    content_type: Option<&str>,
    body: &str,
    secrets: &[String],
) -> PollError {
    tracing::debug!(scaler, what, detail = %crate::excerpt(&scrub(body, secrets)), "answer is not the expected ATOM");
    PollError::Malformed(format!("{what}: {error} ({})", crate::body_summary(content_type, body.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings() {
        let cs = NamespaceConnection::parse(
            "Endpoint=sb://Ebb-Test.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=abc=;EntityPath=orders",
        )
        .unwrap();
        assert_eq!(cs.host, "ebb-test.servicebus.windows.net");
        assert_eq!(cs.credential, SasCredential::Key { name: "listen".into(), key: Secret("abc=".into()) });
        assert_eq!(cs.entity_path.as_deref(), Some("orders"));
        // Keys in any case and order, spaces around pairs, a trailing `;`.
        let cs =
            NamespaceConnection::parse(" sharedaccesskey=k ; ENDPOINT=sb://127.0.0.1:5300/ ; SharedAccessKeyName=n ;")
                .unwrap();
        assert_eq!(cs.host, "127.0.0.1:5300");
        let sas = "SharedAccessSignature sr=https%3A%2F%2Fx%2F&sig=abc%3D&se=1700000000&skn=n";
        let cs =
            NamespaceConnection::parse(&format!("Endpoint=sb://x.servicebus.windows.net/;SharedAccessSignature={sas}"))
                .unwrap();
        assert_eq!(cs.credential, SasCredential::Token(Secret(sas.into())));
        for bad in [
            "",
            "garbage",
            "SharedAccessKeyName=n;SharedAccessKey=k",
            "Endpoint=sb:///;SharedAccessKeyName=n;SharedAccessKey=k",
            "Endpoint=sb://x/;SharedAccessKey=k",
            "Endpoint=sb://x/;SharedAccessSignature=sig=only",
        ] {
            let e = NamespaceConnection::parse(bad).unwrap_err();
            assert!(!e.contains("=k") && !e.contains("sig=only"), "{e}");
        }
    }

    #[test]
    fn scheme_is_http_only_on_loopback() {
        for (host, want) in [
            ("127.0.0.1:5300", "http"),
            ("127.9.9.9", "http"),
            ("[::1]:80", "http"),
            ("localhost:1", "http"),
            ("ebb-test.servicebus.windows.net", "https"),
            ("10.0.0.1:443", "https"),
            ("127.0.0.1.nip.io", "https"),
        ] {
            assert_eq!(scheme_for(host), want, "{host}");
        }
    }

    /// Known vector, computed independently with Python:
    /// `base64.b64encode(hmac.new(b'c2VjcmV0LWtleQ==pretend',
    ///   (quote_plus('https://contoso.servicebus.windows.net/') + '\n1700000000').encode(),
    ///   hashlib.sha256).digest())` = `ZojRPth/dJXcyRInuqhlJYqlmrQG16XKnzYVG6psnjg=`.
    /// The key looks like base64 on purpose: it is used as raw UTF-8 bytes, not decoded.
    #[test]
    fn sas_signature_known_vector() {
        let t = sas_token(
            "https://contoso.servicebus.windows.net/",
            "RootManageSharedAccessKey",
            "c2VjcmV0LWtleQ==pretend",
            1_700_000_000,
        );
        assert_eq!(
            t,
            "SharedAccessSignature sr=https%3A%2F%2Fcontoso.servicebus.windows.net%2F\
             &sig=ZojRPth%2FdJXcyRInuqhlJYqlmrQG16XKnzYVG6psnjg%3D&se=1700000000&skn=RootManageSharedAccessKey"
        );
    }

    #[test]
    fn entity_paths_are_escaped() {
        assert_eq!(path_encode("orders/eu-1"), "orders/eu-1");
        assert_eq!(path_encode("a b?c#d"), "a%20b%3Fc%23d");
    }
}
