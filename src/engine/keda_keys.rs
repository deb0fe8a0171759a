//! Keys KEDA keeps for itself: trigger metadata KEDA's external-scaler client reads for **its
//! own** gRPC connection to ebb, and then forwards with the rest (`pkg/scalers/external_scaler.go`).
//!
//! | key | KEDA's meaning | ebb |
//! |---|---|---|
//! | `scalerAddress` | where ebb is | never read |
//! | `enableTLS` | TLS to ebb with system roots (KEDA ≥ 2.17) | never read; `true` says KEDA's hop is TLS |
//! | `unsafeSsl` | skip verifying **ebb's** certificate | the source's setting only over a plaintext hop (KEDA parity); over TLS it is KEDA's |
//! | `caCert`, `tlsClientCert`, `tlsClientKey` | CA and client certificate for the hop (TriggerAuthentication; older docs show them as metadata) | never read; present means TLS |
//! | `tlsCertFile` | client certificate file (before 2.17) | never read; present means TLS |
//!
//! The same holds for their `…FromEnv` forms (KEDA resolves those into the metadata under the
//! same key). A source that really needs verification off says so with `sourceUnsafeSsl`, a key
//! only ebb reads, which wins over `unsafeSsl` in every case.
//!
//! The rule is a pure function of the metadata KEDA sent and whether ebb serves gRPC over TLS, so
//! every replica reads a trigger the same way.

use std::collections::HashMap;

/// Keys KEDA's client reads for its own connection to ebb.
pub const KEDA_CONNECTION_KEYS: &[&str] =
    &["scalerAddress", "enableTLS", "unsafeSsl", "tlsCertFile", "caCert", "tlsClientCert", "tlsClientKey"];

/// ebb's own key for "do not verify the source's certificate".
pub const SOURCE_UNSAFE_SSL: &str = "sourceUnsafeSsl";

/// How the metadata reached ebb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// KEDA's external-scaler client over gRPC; `tls` when ebb serves gRPC over TLS.
    Keda { tls: bool },
    /// ebb's own config file (the Container Apps bridge): no KEDA hop, every key is ebb's.
    Config,
}

/// Whose `unsafeSsl` it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsafeSslReading {
    /// Neither `unsafeSsl` nor `sourceUnsafeSsl` was given.
    Absent,
    /// `unsafeSsl` applies to the source (plaintext hop: KEDA parity).
    Source,
    /// `unsafeSsl` was KEDA's setting for its TLS connection to ebb; the source stays verified
    /// unless `sourceUnsafeSsl` says otherwise.
    KedaHop,
    /// `sourceUnsafeSsl` decided.
    SourceKey,
}

impl UnsafeSslReading {
    /// One line for the log and `ebb check`.
    pub fn describe(self) -> &'static str {
        match self {
            UnsafeSslReading::Absent => "no unsafeSsl: the source's certificate is verified",
            UnsafeSslReading::Source => "unsafeSsl applies to the source (KEDA's connection to ebb is plaintext)",
            UnsafeSslReading::KedaHop => {
                "unsafeSsl is KEDA's setting for its TLS connection to ebb; the source's certificate stays \
                 verified (sourceUnsafeSsl turns that off)"
            }
            UnsafeSslReading::SourceKey => "sourceUnsafeSsl decides whether the source's certificate is verified",
        }
    }
}

/// The metadata a scaler sees, and what was set aside.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceView {
    /// What the scaler parses.
    pub metadata: HashMap<String, String>,
    /// Keys present in the request that the scaler does not see, as KEDA's, sorted.
    pub ignored: Vec<String>,
    pub unsafe_ssl: UnsafeSslReading,
}

fn present(md: &HashMap<String, String>, key: &str) -> bool {
    [key.to_string(), format!("{key}FromEnv")].iter().any(|k| md.get(k).is_some_and(|v| !v.trim().is_empty()))
}

/// Is KEDA's hop to ebb TLS? ebb serving TLS says so; so does metadata KEDA reads as TLS.
fn hop_is_tls(sent: &HashMap<String, String>, ebb_tls: bool) -> bool {
    let on = |k: &str| sent.get(k).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    ebb_tls
        || on("enableTLS")
        || ["caCert", "tlsClientCert", "tlsClientKey", "tlsCertFile"].iter().any(|k| present(sent, k))
}

/// What the scaler of a trigger sees. `sent` is the metadata as the door received it (KEDA's
/// keys are judged on it alone); `merged` is what the scaler would parse (with any
/// TriggerAuthentication parameters).
pub fn source_view(sent: &HashMap<String, String>, merged: &HashMap<String, String>, door: Door) -> SourceView {
    let mut metadata = merged.clone();
    let mut ignored = Vec::new();
    let unsafe_given = present(merged, "unsafeSsl");
    let mut reading = match door {
        Door::Config => {
            if unsafe_given {
                UnsafeSslReading::Source
            } else {
                UnsafeSslReading::Absent
            }
        }
        Door::Keda { tls } => {
            let hop_tls = hop_is_tls(sent, tls);
            for key in KEDA_CONNECTION_KEYS {
                if *key == "unsafeSsl" && !hop_tls {
                    continue;
                }
                for k in [key.to_string(), format!("{key}FromEnv")] {
                    if metadata.remove(&k).is_some() {
                        ignored.push(k);
                    }
                }
            }
            match (unsafe_given, hop_tls) {
                (false, _) => UnsafeSslReading::Absent,
                (true, false) => UnsafeSslReading::Source,
                (true, true) => UnsafeSslReading::KedaHop,
            }
        }
    };
    if present(merged, SOURCE_UNSAFE_SSL) {
        let direct = merged.get(SOURCE_UNSAFE_SSL).filter(|v| !v.trim().is_empty());
        let value = direct.or_else(|| merged.get(&format!("{SOURCE_UNSAFE_SSL}FromEnv"))).cloned().unwrap_or_default();
        metadata.remove(SOURCE_UNSAFE_SSL);
        metadata.remove(&format!("{SOURCE_UNSAFE_SSL}FromEnv"));
        metadata.remove("unsafeSslFromEnv");
        metadata.insert("unsafeSsl".into(), value);
        reading = UnsafeSslReading::SourceKey;
    }
    ignored.sort();
    SourceView { metadata, ignored, unsafe_ssl: reading }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Issue 14: every setting KEDA's client can have for its hop, against the source's view.
    #[test]
    fn keda_connection_keys_never_reach_the_source() {
        let base = [("scalerAddress", "ebb:9090"), ("scalerType", "prometheus"), ("query", "up")];
        // (what KEDA sent, ebb serves TLS, source's unsafeSsl, reading, why)
        type Row<'a> = (&'a [(&'a str, &'a str)], bool, Option<&'a str>, UnsafeSslReading, &'a str);
        let rows: &[Row] = &[
            (&[], false, None, UnsafeSslReading::Absent, "nothing set"),
            (&[("unsafeSsl", "true")], false, Some("true"), UnsafeSslReading::Source, "plaintext hop: KEDA parity"),
            (&[("unsafeSsl", "true")], true, None, UnsafeSslReading::KedaHop, "ebb serves TLS: KEDA's"),
            (&[("enableTLS", "true"), ("unsafeSsl", "true")], false, None, UnsafeSslReading::KedaHop, "enableTLS"),
            (&[("caCert", "PEM"), ("unsafeSsl", "true")], false, None, UnsafeSslReading::KedaHop, "CA only"),
            (
                &[("tlsClientCert", "PEM"), ("tlsClientKey", "K"), ("unsafeSsl", "true")],
                false,
                None,
                UnsafeSslReading::KedaHop,
                "mTLS",
            ),
            (
                &[("tlsCertFile", "/c.pem"), ("unsafeSsl", "true")],
                false,
                None,
                UnsafeSslReading::KedaHop,
                "KEDA < 2.17",
            ),
            (&[("unsafeSslFromEnv", "true")], true, None, UnsafeSslReading::KedaHop, "FromEnv form"),
            (
                &[("unsafeSsl", "true"), ("sourceUnsafeSsl", "false")],
                false,
                Some("false"),
                UnsafeSslReading::SourceKey,
                "ebb's key wins",
            ),
            (
                &[("unsafeSsl", "true"), ("sourceUnsafeSsl", "true")],
                true,
                Some("true"),
                UnsafeSslReading::SourceKey,
                "on purpose",
            ),
            (
                &[("sourceUnsafeSslFromEnv", "true")],
                true,
                Some("true"),
                UnsafeSslReading::SourceKey,
                "ebb's key from env",
            ),
        ];
        for (extra, tls, want, reading, why) in rows {
            let mut sent = md(&base);
            sent.extend(md(extra));
            let v = source_view(&sent, &sent, Door::Keda { tls: *tls });
            assert_eq!(v.metadata.get("unsafeSsl").map(String::as_str), *want, "{why}");
            assert_eq!(v.unsafe_ssl, *reading, "{why}");
            for k in KEDA_CONNECTION_KEYS.iter().filter(|k| **k != "unsafeSsl") {
                assert!(!v.metadata.contains_key(*k), "{why}: {k} reached the source");
            }
            assert!(!v.metadata.contains_key("unsafeSslFromEnv") || !tls, "{why}");
            assert!(v.ignored.contains(&"scalerAddress".to_string()), "{why}");
            assert_eq!(v.metadata["query"], "up");
        }
    }

    #[test]
    fn config_metadata_is_all_ebbs() {
        let sent = md(&[("scalerType", "prometheus"), ("unsafeSsl", "true")]);
        let v = source_view(&sent, &sent, Door::Config);
        assert_eq!(
            (v.metadata.get("unsafeSsl").map(String::as_str), v.unsafe_ssl),
            (Some("true"), UnsafeSslReading::Source)
        );
        assert!(v.ignored.is_empty());
    }

    /// A TriggerAuthentication parameter named like KEDA's hop key is the source's (KEDA never
    /// forwards its own TriggerAuthentication); only what KEDA sent decides the hop.
    #[test]
    fn the_hop_is_judged_on_what_keda_sent() {
        let sent = md(&[("scalerType", "kafka"), ("unsafeSsl", "true"), ("authenticationRef", "a")]);
        let mut merged = sent.clone();
        merged.insert("caCert".into(), "PEM".into());
        let v = source_view(&sent, &merged, Door::Keda { tls: false });
        assert_eq!(v.unsafe_ssl, UnsafeSslReading::Source);
        assert!(!v.metadata.contains_key("caCert"));
    }
}
