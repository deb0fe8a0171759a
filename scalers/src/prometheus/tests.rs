//! `prometheus` tests: KEDA's parse table, answer reading, and polls against local servers
//! (plain, TLS and mTLS, Azure managed Prometheus with a fake credential).

use super::*;
use crate::azure::token::fake::FakeCredential;
use crate::PollError;
use reqwest::header::AUTHORIZATION;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Mutex;

fn ctx() -> Arc<ScalerContext> {
    Arc::new(ScalerContext::default())
}
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

const ADDR: &str = "http://localhost:9090";

/// Metadata entries in a table row.
type Pairs = &'static [(&'static str, &'static str)];

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// `serverAddress`, `query` and `threshold` plus `extra` (an empty value removes a key).
fn base(extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut m = map(&[("serverAddress", ADDR), ("query", "up"), ("threshold", "100")]);
    for (k, v) in extra {
        if v.is_empty() {
            m.remove(*k);
        } else {
            m.insert(k.to_string(), v.to_string());
        }
    }
    m
}

fn config(m: &HashMap<String, String>) -> Result<PrometheusScaler, ConfigErrors> {
    parse_config(&Metadata::new(m))
}

fn ok(extra: &[(&str, &str)]) -> PrometheusScaler {
    config(&base(extra)).unwrap_or_else(|e| panic!("{extra:?}: {e}"))
}

// Test PKI (EC P-256, valid 2000–2100): a CA, a server cert for 127.0.0.1/localhost and a
// client cert, made with `openssl ca`. Test-only keys.
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBXzCCAQagAwIBAgICEAAwCgYIKoZIzj0EAwIwFjEUMBIGA1UEAwwLZWJiIHRl
c3QgQ0EwIBcNMDAwMTAxMDAwMDAwWhgPMjEwMDAxMDEwMDAwMDBaMBYxFDASBgNV
BAMMC2ViYiB0ZXN0IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAELiIfkAT4
yNwuDwm9s1QNRiRWVeAOF0vn4dyNZJMdeDXAcwK6Cf8tQmuVSRzl7j9GUs8glk/H
s4HSp3CPSXI3hqNCMEAwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYw
HQYDVR0OBBYEFPAX+7YS6GB4C/BSeR+QMNqB9YW4MAoGCCqGSM49BAMCA0cAMEQC
IETGs9VFJKc7+gqXTQyDKpcHmF+AOBLc9PbeYU8MaMmfAiBIFC0rIATSw6yP4/LM
rTMyz7wqZUdl7p5MLIpjFYJ51g==
-----END CERTIFICATE-----
";
const SERVER_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBrzCCAVWgAwIBAgICEAEwCgYIKoZIzj0EAwIwFjEUMBIGA1UEAwwLZWJiIHRl
c3QgQ0EwIBcNMDAwMTAxMDAwMDAwWhgPMjEwMDAxMDEwMDAwMDBaMBQxEjAQBgNV
BAMMCWxvY2FsaG9zdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABIXwBqxoFNsr
Y/JkdctPHz+UD8PMhIGHTUznKdEwfK1GMiepHjwYfv4E1YjmlPWnuGxJDzWZA3j6
wfabPgsXRKajgZIwgY8wGgYDVR0RBBMwEYcEfwAAAYIJbG9jYWxob3N0MBMGA1Ud
JQQMMAoGCCsGAQUFBwMBMAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/BAQDAgeAMB8G
A1UdIwQYMBaAFPAX+7YS6GB4C/BSeR+QMNqB9YW4MB0GA1UdDgQWBBT6uLNqfsIM
VT4ZAPl4lfTT1UHIODAKBggqhkjOPQQDAgNIADBFAiEA6nRaM5HHBnEgm/W2bzFl
YGiFRnolOS5n9OJCm3czUh8CIHFsTDlMGvCpcQcWSKJNeZvkiWuhMRhk302T2evj
+8Vx
-----END CERTIFICATE-----
";
const SERVER_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgrVHcwm6fhYJvb9wg
PBTg5qAaJSNJWmU8mfwmgrwzLUChRANCAASF8AasaBTbK2PyZHXLTx8/lA/DzISB
h01M5ynRMHytRjInqR48GH7+BNWI5pT1p7hsSQ81mQN4+sH2mz4LF0Sm
-----END PRIVATE KEY-----
";
const CLIENT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBkTCCATigAwIBAgICEAIwCgYIKoZIzj0EAwIwFjEUMBIGA1UEAwwLZWJiIHRl
c3QgQ0EwIBcNMDAwMTAxMDAwMDAwWhgPMjEwMDAxMDEwMDAwMDBaMBUxEzARBgNV
BAMMCmViYiBjbGllbnQwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAT+1cZg0pR+
tS6IIALm5R44bm2RSOIHe6Axr2+SnTxWR3EYGo0/pkvVeuEDM8LsC8AA4uuMc7ir
l200sRdDZILko3UwczATBgNVHSUEDDAKBggrBgEFBQcDAjAMBgNVHRMBAf8EAjAA
MA4GA1UdDwEB/wQEAwIHgDAfBgNVHSMEGDAWgBTwF/u2EuhgeAvwUnkfkDDagfWF
uDAdBgNVHQ4EFgQUhWdLAdkWWEELmdnmbdOzNLFFmkwwCgYIKoZIzj0EAwIDRwAw
RAIgGCx3zWRrB0ont66ihDqLDLekrzQafQgUt3basEGjgYQCIFeVOvQT5w2isDxc
M70GfJf9sg6OXdBTl+QCHVRe1Rsu
-----END CERTIFICATE-----
";
const CLIENT_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgZIZKe6jKlXIn8J2F
Qhq0w9GOA/dD2++agyccnduTW9qhRANCAAT+1cZg0pR+tS6IIALm5R44bm2RSOIH
e6Axr2+SnTxWR3EYGo0/pkvVeuEDM8LsC8AA4uuMc7irl200sRdDZILk
-----END PRIVATE KEY-----
";

// ---- parsing -------------------------------------------------------------------------

/// Each row: name, metadata on top of [`base`] (an empty value removes the key), the keys
/// expected to fail (empty: must parse), and the KEDA rule or test row it mirrors
/// (`testPromMetadata` / `testPrometheusAuthMetadata` in `prometheus_scaler_test.go`).
#[test]
fn parse_table() {
    #[rustfmt::skip]
    let rows: &[(&str, Pairs, &[&str], &str)] = &[
        ("all properly formed", &[], &[], "testPromMetadata[1]"),
        ("with namespace", &[("namespace", "foo")], &[], "testPromMetadata[2]"),
        ("with ignoreNullValues", &[("ignoreNullValues", "false")], &[], "testPromMetadata[3]"),
        ("with activationThreshold", &[("activationThreshold", "50")], &[], "testPromMetadata[4]"),
        ("negative activationThreshold", &[("activationThreshold", "-1.5")], &[], "float64 field, no range"),
        ("missing serverAddress", &[("serverAddress", "")], &["serverAddress"], "testPromMetadata[5]"),
        ("missing threshold", &[("threshold", "")], &["threshold"], "testPromMetadata[6]"),
        ("malformed threshold", &[("threshold", "one")], &["threshold"], "testPromMetadata[7]"),
        ("malformed activationThreshold", &[("activationThreshold", "one")], &["activationThreshold"], "testPromMetadata[8]"),
        ("missing query", &[("query", "")], &["query"], "testPromMetadata[9]"),
        ("ignoreNullValues not a bool", &[("ignoreNullValues", "xxxx")], &["ignoreNullValues"], "testPromMetadata[10]"),
        ("unsafeSsl", &[("serverAddress", "https://localhost:9090"), ("unsafeSsl", "true")], &[], "testPromMetadata[11]"),
        ("unsafeSsl not a bool", &[("unsafeSsl", "yes")], &["unsafeSsl"], "strconv.ParseBool"),
        ("customHeaders", &[("customHeaders", "key1=value1,key2=value2")], &[], "testPromMetadata[12]"),
        ("customHeaders wrong format", &[("customHeaders", "key1=value1,key2")], &["customHeaders"], "testPromMetadata[13]"),
        ("customHeaders bad name", &[("customHeaders", "bad name=1")], &["customHeaders"], "Go rejects it at request time"),
        ("queryParameters", &[("queryParameters", "key1=value1,key2=value2")], &[], "testPromMetadata[14]"),
        ("queryParameters wrong format", &[("queryParameters", "key1=value1,key2")], &["queryParameters"], "testPromMetadata[15]"),
        ("timeout in ms", &[("timeout", "1000")], &[], "testPromMetadata[16]"),
        ("timeout negative", &[("timeout", "-1")], &["timeout"], "testPromMetadata[17]"),
        ("timeout not a number", &[("timeout", "a")], &["timeout"], "testPromMetadata[18]"),
        ("timeout Go duration", &[("timeout", "1.5s")], &[], "typed_config: time.ParseDuration first"),
        ("timeout negative duration", &[("timeout", "-5s")], &["timeout"], "typed_config: duration cannot be negative"),
        ("timeout zero", &[("timeout", "0")], &["timeout"], "ebb: KEDA falls back to the default"),
        ("threshold zero", &[("threshold", "0")], &["threshold"], "ebb: HPA target must be > 0"),
        ("threshold negative", &[("threshold", "-3")], &["threshold"], "ebb: HPA target must be > 0"),
        ("serverAddress not a URL", &[("serverAddress", "localhost:9090")], &["serverAddress"], "ebb: must be http(s)"),
        ("serverAddress other scheme", &[("serverAddress", "ftp://localhost")], &["serverAddress"], "ebb: must be http(s)"),
        ("serverAddress with user info", &[("serverAddress", "http://u:p@localhost")], &["serverAddress"], "ebb: no secrets in URLs"),
        ("serverAddress with query", &[("serverAddress", "http://localhost/?a=b")], &["serverAddress"], "ebb: KEDA would build a broken URL"),
        // authModes (testPrometheusAuthMetadata)
        ("tls ca cert key", &[("authModes", "tls"), ("ca", CA_PEM), ("cert", CLIENT_PEM), ("key", CLIENT_KEY)], &[], "auth[0] success TLS"),
        ("tls ca optional", &[("authModes", "tls"), ("cert", CLIENT_PEM), ("key", CLIENT_KEY)], &[], "auth[1] TLS, ca is optional"),
        ("tls key missing", &[("authModes", "tls"), ("ca", CA_PEM), ("cert", CLIENT_PEM)], &["key"], "auth[2] fail TLS, key not given"),
        ("tls cert missing", &[("authModes", "tls"), ("ca", CA_PEM), ("key", CLIENT_KEY)], &["cert"], "auth[3] fail TLS, cert not given"),
        ("tls garbage PEM", &[("authModes", "tls"), ("ca", "caaa"), ("cert", "ceert"), ("key", "keey")], &["cert", "key", "ca"], "auth[0] values: KEDA fails later, building the client"),
        ("tls key is a cert", &[("authModes", "tls"), ("cert", CLIENT_PEM), ("key", CLIENT_PEM)], &["key"], "ebb: PEM checked at parse time"),
        ("ca without authModes", &[("ca", CA_PEM)], &[], "ebb: KEDA ignores ca without authModes"),
        ("bearer", &[("authModes", "bearer"), ("bearerToken", "tooooken")], &[], "auth[4] success bearer"),
        ("bearer via token alias", &[("authModes", "bearer"), ("token", "tooooken")], &[], "name=bearerToken;token"),
        ("bearer without token", &[("authModes", "bearer")], &["bearerToken"], "auth[5] fail bearer with no token"),
        ("basic", &[("authModes", "basic"), ("username", "user"), ("password", "pass")], &[], "auth[6] success basicAuth"),
        ("basic without password", &[("authModes", "basic"), ("username", "user")], &[], "Validate checks username only"),
        ("basic without username", &[("authModes", "basic")], &["username"], "auth[7] fail basicAuth with no username"),
        ("tls and basic", &[("authModes", "tls, basic"), ("ca", CA_PEM), ("cert", CLIENT_PEM), ("key", CLIENT_KEY), ("username", "user"), ("password", "pass")], &[], "auth[8]"),
        ("tls and basic, no cert/key", &[("authModes", "tls,basic"), ("username", "user"), ("password", "pass")], &["cert", "key"], "auth[9] / auth[14]"),
        ("custom", &[("authModes", "custom"), ("customAuthHeader", "header"), ("customAuthValue", "value")], &[], "auth[10] success custom auth"),
        ("custom without header", &[("authModes", "custom"), ("customAuthValue", "value")], &["customAuthHeader"], "auth[11]"),
        ("custom without value", &[("authModes", "custom"), ("customAuthHeader", "header")], &["customAuthValue"], "auth[12]"),
        ("custom with newlines", &[("authModes", "custom"), ("customAuthHeader", "header\n"), ("customAuthValue", "value\n")], &[], "auth[13] values are trimmed"),
        ("custom bad header name", &[("authModes", "custom"), ("customAuthHeader", "a b"), ("customAuthValue", "v")], &["customAuthHeader"], "Go rejects it at request time"),
        ("bearer and basic", &[("authModes", "bearer,basic"), ("bearerToken", "t"), ("username", "u")], &["authModes"], "exclusiveSet=bearer;basic;oauth"),
        ("unknown mode", &[("authModes", "kerberos")], &["authModes"], "enum=apiKey;basic;tls;bearer;custom;oauth"),
        ("oauth", &[("authModes", "oauth")], &["authModes"], "ebb: the prometheus scaler never applies it"),
        ("authMode alias", &[("authMode", "bearer"), ("bearerToken", "t")], &[], "name=authModes;authMode"),
        ("azure resource URL with authModes", &[("authModes", "bearer"), ("bearerToken", "t"), ("azureManagedPrometheusResourceURL", "https://x/.default")], &["azureManagedPrometheusResourceURL"], "pod identity cannot be enabled with other auth types (auth[15])"),
        ("everything missing", &[("serverAddress", ""), ("query", ""), ("threshold", "")], &["serverAddress", "query", "threshold"], "testPromMetadata[0]"),
    ];
    for (name, extra, want, cite) in rows {
        let got = config(&base(extra));
        let mut got_keys: Vec<String> = match &got {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.key.clone()).collect(),
        };
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        got_keys.sort();
        want.sort();
        assert_eq!(got_keys, want, "row {name:?} ({cite}): {:?}", got.err().map(|e| e.to_string()));
    }
}

#[test]
fn defaults() {
    let s = ok(&[]);
    assert_eq!(s.query_url.as_str(), "http://localhost:9090/api/v1/query");
    assert_eq!(s.target(), 100.0);
    assert_eq!(s.activation_threshold, 0.0);
    assert!(s.ignore_null_values);
    assert!(!s.unsafe_ssl);
    assert_eq!(s.poll_timeout(), Duration::from_millis(3000));
    assert!(s.headers.is_empty());
    assert!(s.azure_scope.is_none());
    assert_eq!(s.scaler_type(), "prometheus");
    assert!(s.source_key().0.starts_with("prometheus|"));
}

#[test]
fn from_env_keys_are_read() {
    // KEDA delivers `<key>FromEnv` with the resolved value under the same name.
    let m = map(&[
        ("serverAddressFromEnv", ADDR),
        ("query", "up"),
        ("thresholdFromEnv", "5"),
        ("authModes", "bearer"),
        ("bearerTokenFromEnv", "t0k3n"),
    ]);
    let s = config(&m).unwrap();
    assert_eq!(s.target(), 5.0);
    assert_eq!(s.headers[AUTHORIZATION], "Bearer t0k3n");
}

#[test]
fn server_address_paths() {
    for (addr, want) in [
        ("http://h:9090", "http://h:9090/api/v1/query"),
        ("http://h:9090/", "http://h:9090/api/v1/query"),
        ("https://h/prom/", "https://h/prom/api/v1/query"),
        (
            "https://h/v1/projects/p/location/global/prometheus",
            "https://h/v1/projects/p/location/global/prometheus/api/v1/query",
        ),
    ] {
        assert_eq!(ok(&[("serverAddress", addr)]).query_url.as_str(), want, "{addr}");
    }
}

#[test]
fn timeouts() {
    #[rustfmt::skip]
    let good = [("1000", 1000), ("5", 5), ("5s", 5000), ("1500ms", 1500), ("1.5s", 1500), ("1m", 60_000), ("250000us", 250)];
    for (v, ms) in good {
        assert_eq!(ok(&[("timeout", v)]).timeout, Duration::from_millis(ms), "{v}");
    }
    for v in ["5sec", "s", "1..5s", ".s", "48h", "-0", "0ms"] {
        assert_eq!(config(&base(&[("timeout", v)])).unwrap_err().keys(), ["timeout"], "{v}");
    }
    assert_eq!(go_duration_secs("1h30m"), Some(5400.0));
    assert_eq!(go_duration_secs("-0"), Some(0.0));
    assert_eq!(go_duration_secs("1µs"), Some(1e-6));
    assert_eq!(go_duration_secs("1"), None);
}

#[test]
fn azure_scope_by_host() {
    for (host, scope) in [
        ("https://ws-1.eastus.prometheus.monitor.azure.com", Some("https://prometheus.monitor.azure.com/.default")),
        ("https://WS.usgovvirginia.prometheus.monitor.azure.us", Some("https://prometheus.monitor.azure.us/.default")),
        ("https://ws.chinanorth3.prometheus.monitor.azure.cn/", Some("https://prometheus.monitor.azure.cn/.default")),
        ("https://prometheus.monitor.azure.com.evil.example", None),
        ("http://localhost:9090", None),
    ] {
        assert_eq!(ok(&[("serverAddress", host)]).azure_scope.as_deref(), scope, "{host}");
    }
    // authModes turn Azure auth off, as KEDA's pod identity is off with authModes.
    let s = ok(&[
        ("serverAddress", "https://ws.eastus.prometheus.monitor.azure.com"),
        ("authModes", "bearer"),
        ("bearerToken", "t"),
    ]);
    assert!(s.azure_scope.is_none());
    let s = ok(&[("azureManagedPrometheusResourceURL", "https://prometheus.example/.default")]);
    assert_eq!(s.azure_scope.as_deref(), Some("https://prometheus.example/.default"));
}

#[test]
fn source_key_ignores_thresholds_and_tracks_what_is_polled() {
    let key = |extra: &[(&str, &str)]| ok(extra).source_key().clone();
    let a = key(&[]);
    assert_eq!(a, key(&[("threshold", "7"), ("activationThreshold", "3")]));
    assert_eq!(a, key(&[("serverAddress", "http://localhost:9090/")]));
    assert_eq!(
        key(&[("queryParameters", "b=2,a=1")]),
        key(&[("queryParameters", "a=1, b=2")]),
        "parameter order does not matter"
    );
    assert_eq!(
        key(&[("customHeaders", "X-B=2,X-A=1")]),
        key(&[("customHeaders", "X-A=1,X-B=2")]),
        "header order does not matter"
    );
    // Bearer/basic/custom credentials are read only when their mode is on (KEDA).
    assert_eq!(a, key(&[("bearerToken", "unused")]));

    let different: &[&[(&str, &str)]] = &[
        &[("serverAddress", "http://other:9090")],
        &[("query", "sum(up)")],
        &[("namespace", "ns")],
        &[("queryParameters", "a=1")],
        &[("queryParameters", "a=2")],
        &[("customHeaders", "X-A=1")],
        &[("customHeaders", "X-A=2")],
        &[("authModes", "bearer"), ("bearerToken", "one")],
        &[("authModes", "bearer"), ("bearerToken", "two")],
        &[("authModes", "basic"), ("username", "u"), ("password", "p1")],
        &[("authModes", "basic"), ("username", "u"), ("password", "p2")],
        &[("authModes", "custom"), ("customAuthHeader", "X-Key"), ("customAuthValue", "v")],
        &[("authModes", "tls"), ("cert", CLIENT_PEM), ("key", CLIENT_KEY)],
        &[("ca", CA_PEM)],
        &[("unsafeSsl", "true")],
        &[("timeout", "5s")],
        &[("ignoreNullValues", "false")],
        &[("azureManagedPrometheusResourceURL", "https://x/.default")],
    ];
    let mut seen = vec![a];
    for extra in different {
        let k = key(extra);
        assert!(!seen.contains(&k), "{extra:?} collides: {k}");
        seen.push(k);
    }
}

#[test]
fn secrets_never_show() {
    let secrets = ["tok-SECRET-1", "pw-SECRET-2", "hv-SECRET-3", "cv-SECRET-4"];
    let m = base(&[
        ("authModes", "basic,custom,tls"),
        ("username", "user"),
        ("password", secrets[1]),
        ("bearerToken", secrets[0]),
        ("customHeaders", &format!("X-Api-Key={}", secrets[2])),
        ("customAuthHeader", "X-Auth"),
        ("customAuthValue", secrets[3]),
        ("cert", CLIENT_PEM),
        ("key", CLIENT_KEY),
    ]);
    let s = config(&m).unwrap();
    let key_body = CLIENT_KEY.lines().nth(1).unwrap();
    let shown = format!("{s:?} {} {:?}", s.source_key(), s.build_poller(&ctx(), None).unwrap());
    for secret in secrets.iter().chain([&key_body]) {
        assert!(!shown.contains(secret), "{secret} leaked in {shown}");
    }
    assert!(!shown.contains(&azure_core::base64::encode(format!("user:{}", secrets[1]))));

    // Errors do not echo secret values either.
    let bad = base(&[
        ("authModes", "bearer,custom,tls"),
        ("bearerToken", "tok-SECRET\u{1}"),
        ("customHeaders", "X-A=hv-SECRET\u{1},broken-SECRET"),
        ("customAuthHeader", "X-Auth"),
        ("customAuthValue", "cv-SECRET\u{1}"),
        ("cert", CLIENT_PEM),
        ("key", "-----BEGIN PRIVATE KEY-----\nkey-SECRET\n-----END PRIVATE KEY-----\n"),
        ("serverAddress", "http://user:pw-SECRET@localhost"),
    ]);
    let e = config(&bad).unwrap_err();
    assert!(e.0.len() >= 5, "{e}");
    assert!(!e.to_string().contains("SECRET"), "{e}");
}

#[test]
fn evaluate_applies_this_triggers_thresholds() {
    let s = ok(&[("threshold", "10"), ("activationThreshold", "5")]);
    assert_eq!(s.evaluate(&Measurement::Value(17.0)), Evaluation { metric: 17.0, active: true });
    // Strictly greater (KEDA `val > ActivationThreshold`).
    assert_eq!(s.evaluate(&Measurement::Value(5.0)), Evaluation { metric: 5.0, active: false });
    let s = ok(&[("activationThreshold", "-2")]);
    assert!(s.evaluate(&Measurement::Value(-1.0)).active);
    assert!(!ok(&[]).evaluate(&Measurement::Value(0.0)).active);
}

// ---- reading answers (KEDA `testPromQueryResult`) -------------------------------------

#[test]
fn interpret_table() {
    use PollError as E;
    // (name, body, ignoreNullValues, expected value or error kind)
    #[rustfmt::skip]
    let rows: &[(&str, &str, bool, Result<f64, &str>)] = &[
        ("no results", "{}", true, Ok(0.0)),
        ("no values", r#"{"data":{"result":[]}}"#, true, Ok(0.0)),
        ("no values but shouldn't ignore", r#"{"data":{"result":[]}}"#, false, Err("rejected")),
        ("value is empty list", r#"{"data":{"result":[{"value": []}]}}"#, true, Ok(0.0)),
        ("value is empty list but shouldn't ignore", r#"{"data":{"result":[{"value": []}]}}"#, false, Err("rejected")),
        ("valid value", r#"{"data":{"result":[{"value": ["1", "2"]}]}}"#, true, Ok(2.0)),
        ("not enough values", r#"{"data":{"result":[{"value": ["1"]}]}}"#, true, Err("rejected")),
        ("multiple results", r#"{"data":{"result":[{},{}]}}"#, true, Err("rejected")),
        ("+Inf", r#"{"data":{"result":[{"value": ["1", "+Inf"]}]}}"#, true, Ok(0.0)),
        ("+Inf but shouldn't ignore", r#"{"data":{"result":[{"value": ["1", "+Inf"]}]}}"#, false, Err("rejected")),
        ("-Inf", r#"{"data":{"result":[{"value": ["1", "-Inf"]}]}}"#, true, Ok(0.0)),
        ("-Inf but shouldn't ignore", r#"{"data":{"result":[{"value": ["1", "-Inf"]}]}}"#, false, Err("rejected")),
        ("NaN", r#"{"data":{"result":[{"value": ["1", "NaN"]}]}}"#, true, Ok(0.0)),
        ("NaN but shouldn't ignore", r#"{"data":{"result":[{"value": ["1", "NaN"]}]}}"#, false, Err("rejected")),
        // Beyond KEDA's table.
        ("negative", r#"{"data":{"resultType":"vector","result":[{"metric":{},"value":[1,"-3.5"]}]}}"#, true, Ok(-3.5)),
        ("exponent", r#"{"data":{"resultType":"vector","result":[{"metric":{},"value":[1,"1e3"]}]}}"#, true, Ok(1000.0)),
        ("scalar", r#"{"status":"success","data":{"resultType":"scalar","result":[1795379264.928,"20"]}}"#, true, Ok(20.0)),
        ("scalar NaN", r#"{"status":"success","data":{"resultType":"scalar","result":[1795379264.928,"NaN"]}}"#, false, Err("rejected")),
        ("matrix", r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"]]}]}}"#, true, Err("rejected")),
        ("string", r#"{"status":"success","data":{"resultType":"string","result":[1,"x"]}}"#, true, Err("rejected")),
        ("null value", r#"{"data":{"result":[{"value":[1,null]}]}}"#, true, Ok(0.0)),
        ("empty string value", r#"{"data":{"result":[{"value":[1,""]}]}}"#, true, Err("malformed")),
        ("number value", r#"{"data":{"result":[{"value":[1,2]}]}}"#, true, Err("malformed")),
        ("garbage", "<html>oops</html>", true, Err("malformed")),
        ("array body", "[]", true, Err("malformed")),
        ("result not an array", r#"{"data":{"result":5}}"#, true, Err("malformed")),
    ];
    for (name, body, ignore, want) in rows {
        let got = interpret(body.as_bytes(), "q", *ignore);
        match (want, &got) {
            (Ok(w), Ok(g)) => assert_eq!(w, g, "{name}"),
            (Err(kind), Err(e)) => assert_eq!(*kind, e.kind(), "{name}: {e}"),
            _ => panic!("{name}: want {want:?}, got {got:?}"),
        }
    }
    let e = interpret(br#"{"data":{"result":[{},{}]}}"#, "sum(x)", true).unwrap_err();
    assert_eq!(e, E::Rejected("prometheus query sum(x) returned multiple elements".into()));
    let e = interpret(br#"{"data":{"result":[]}}"#, "q", false).unwrap_err();
    assert!(e.to_string().contains("empty result"), "{e}");
}

// ---- polling against a local server -------------------------------------------------

/// Real Prometheus 2.x answers.
const VECTOR_17: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"queue_depth","job":"scaler_test","queue":"orders"},"value":[1795379264.817,"17"]}]}}"#;
const EMPTY_VECTOR: &str = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
const TWO_SERIES: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"queue_depth","job":"scaler_test","queue":"orders"},"value":[1795379264.817,"17"]},{"metric":{"__name__":"queue_depth","job":"scaler_test","queue":"refunds"},"value":[1795379264.817,"3"]}]}}"#;
const SCALAR_20: &str = r#"{"status":"success","data":{"resultType":"scalar","result":[1795379264.928,"20"]}}"#;
const NAN: &str =
    r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1795379264.817,"NaN"]}]}}"#;
const BAD_DATA: &str = r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:6: parse error: unclosed left parenthesis"}"#;

/// What the stub server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    query: Vec<(String, String)>,
    headers: axum::http::HeaderMap,
}

impl Seen {
    fn param(&self, k: &str) -> Option<&str> {
        self.query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
    fn header(&self, k: &str) -> Vec<&str> {
        self.headers.get_all(k).iter().map(|v| v.to_str().unwrap()).collect()
    }
}

#[derive(Clone)]
struct Stub {
    status: u16,
    body: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    delay: Duration,
}

fn stub(status: u16, body: &'static str) -> Stub {
    Stub { status, body, headers: Vec::new(), delay: Duration::ZERO }
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn app(stub: Stub) -> (axum::Router, Log) {
    let log: Log = Arc::default();
    let (seen, stub) = (log.clone(), Arc::new(stub));
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (seen, stub) = (seen.clone(), stub.clone());
        async move {
            let query = url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            seen.lock().unwrap().push(Seen {
                path: req.uri().path().to_owned(),
                query,
                headers: req.headers().clone(),
            });
            tokio::time::sleep(stub.delay).await;
            let mut resp = axum::http::Response::builder().status(stub.status);
            if !stub.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
                resp = resp.header("content-type", "application/json");
            }
            for (k, v) in &stub.headers {
                resp = resp.header(*k, *v);
            }
            resp.body(axum::body::Body::from(stub.body)).unwrap()
        }
    });
    (app, log)
}

/// Serves `stub` on 127.0.0.1; returns its base URL and the request log.
async fn serve(stub: Stub) -> (String, Log) {
    let (app, log) = app(stub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), log)
}

async fn poll_with(addr: &str, extra: &[(&str, &str)]) -> Result<Measurement, PollError> {
    let mut m = base(extra);
    m.insert("serverAddress".into(), addr.into());
    let s = config(&m).unwrap();
    crate::poll_once(&s).await
}

#[tokio::test]
async fn poll_reads_a_vector_and_sends_keda_request() {
    let (addr, log) = serve(stub(200, VECTOR_17)).await;
    let q = r#"sum(queue_depth{queue="orders"}) + 0"#;
    let before = azure_core::time::OffsetDateTime::now_utc();
    let got = poll_with(&addr, &[("query", q), ("namespace", "team-a"), ("queryParameters", "dedup=true,b=x y")]).await;
    assert_eq!(got, Ok(Measurement::Value(17.0)));

    let seen = log.lock().unwrap()[0].clone();
    assert_eq!(seen.path, "/api/v1/query");
    assert_eq!(seen.param("query"), Some(q));
    assert_eq!(seen.param("namespace"), Some("team-a"));
    assert_eq!(seen.param("dedup"), Some("true"));
    assert_eq!(seen.param("b"), Some("x y"));
    let names: Vec<_> = seen.query.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["query", "time", "namespace", "b", "dedup"], "KEDA's order, parameters sorted");
    let time = seen.param("time").unwrap();
    assert!(time.ends_with('Z') && time.contains('.'), "{time}");
    let t = azure_core::time::parse_rfc3339(time).unwrap();
    assert!(t >= before - Duration::from_millis(1) && t <= azure_core::time::OffsetDateTime::now_utc(), "{time}");
    assert!(seen.headers.get("authorization").is_none());
}

#[tokio::test]
async fn poll_answers_like_keda() {
    let cases: &[(&str, Stub, Pairs, Result<f64, &str>)] = &[
        ("empty vector", stub(200, EMPTY_VECTOR), &[], Ok(0.0)),
        (
            "empty vector, ignoreNullValues=false",
            stub(200, EMPTY_VECTOR),
            &[("ignoreNullValues", "false")],
            Err("rejected"),
        ),
        ("two series", stub(200, TWO_SERIES), &[], Err("rejected")),
        ("scalar", stub(200, SCALAR_20), &[], Ok(20.0)),
        ("NaN", stub(200, NAN), &[], Ok(0.0)),
        ("NaN, ignoreNullValues=false", stub(200, NAN), &[("ignoreNullValues", "false")], Err("rejected")),
        ("garbage", stub(200, "<html>502 Bad Gateway</html>"), &[], Err("malformed")),
        ("bad_data 400", stub(400, BAD_DATA), &[], Err("http")),
        ("401", stub(401, "Unauthorized\n"), &[], Err("auth")),
        ("403", stub(403, "forbidden"), &[], Err("auth")),
        ("404", stub(404, "404 page not found\n"), &[], Err("not_found")),
        ("429", stub(429, "slow down"), &[], Err("throttled")),
        ("500", stub(500, ""), &[], Err("http")),
    ];
    for (name, s, extra, want) in cases {
        let (addr, _) = serve(s.clone()).await;
        let got = poll_with(&addr, extra).await;
        match (want, &got) {
            (Ok(w), Ok(Measurement::Value(g))) => assert_eq!(w, g, "{name}"),
            (Err(kind), Err(e)) => assert_eq!(*kind, e.kind(), "{name}: {e}"),
            _ => panic!("{name}: want {want:?}, got {got:?}"),
        }
    }
}

#[tokio::test]
async fn poll_error_details() {
    let (addr, _) = serve(stub(400, BAD_DATA)).await;
    let e = poll_with(&addr, &[("query", "sum(up")]).await.unwrap_err();
    let detail = format!("bad_data (application/json, {} bytes)", BAD_DATA.len());
    assert_eq!(e, PollError::Http { status: 400, detail });
    assert_eq!(e.to_string(), "source answered HTTP 400: bad_data (application/json, 124 bytes)");

    let (addr, _) = serve(stub(200, TWO_SERIES)).await;
    let e = poll_with(&addr, &[("query", "queue_depth")]).await.unwrap_err();
    assert_eq!(e.to_string(), "prometheus query queue_depth returned multiple elements");

    let mut s = stub(503, "overloaded");
    s.headers.push(("retry-after", "7"));
    let (addr, _) = serve(s).await;
    let e = poll_with(&addr, &[]).await.unwrap_err();
    assert!(e.is_throttling());
    assert_eq!(
        e,
        PollError::Throttled {
            detail: "HTTP 503: application/json, 10 bytes".into(),
            retry_after: Some(Duration::from_secs(7))
        }
    );

    let (addr, _) = serve(stub(401, "Unauthorized")).await;
    let e = poll_with(&addr, &[("authModes", "bearer"), ("bearerToken", "tok-SECRET")]).await.unwrap_err();
    assert_eq!(e, PollError::Auth { status: 401, detail: "application/json, 12 bytes".into() });

    let (addr, _) = serve(stub(500, "")).await;
    assert_eq!(poll_with(&addr, &[]).await.unwrap_err().to_string(), "source answered HTTP 500: empty body");
}

/// The caller chooses `serverAddress`, so an answer may be any internal page: no error
/// quotes its bytes (nor values parsed out of it), only status, errorType, type and size.
#[tokio::test]
async fn poll_errors_never_quote_the_answer() {
    const M: &str = "LEAKED-BODY-MARKER";
    let html = |status| {
        let mut s = stub(status, "<html><title>LEAKED-BODY-MARKER</title>internal admin page</html>");
        s.headers.push(("content-type", "text/html; charset=utf-8"));
        s
    };
    let cases: &[(&str, Stub, &str, &[&str])] = &[
        ("500 html", html(500), "http", &["HTTP 500", "text/html, 65 bytes"]),
        ("401 html", html(401), "auth", &["HTTP 401", "text/html"]),
        ("404 html", html(404), "not_found", &["HTTP 404", "text/html"]),
        ("429 html", html(429), "throttled", &["HTTP 429", "text/html"]),
        (
            "400 prometheus error",
            stub(400, r#"{"status":"error","errorType":"bad_data","error":"LEAKED-BODY-MARKER"}"#),
            "http",
            &["HTTP 400", "bad_data", "application/json"],
        ),
        (
            "422 error type not a token",
            stub(422, r#"{"status":"error","errorType":"LEAKED-BODY-MARKER","error":"x"}"#),
            "http",
            &["HTTP 422", "application/json, 63 bytes"],
        ),
        ("200 html", html(200), "malformed", &["not JSON", "text/html, 65 bytes"]),
        ("200 truncated JSON", stub(200, r#"{"data":"LEAKED-BODY-MARKER"#), "malformed", &["not JSON", "line 1"]),
        (
            "200 wrong-typed value",
            stub(200, r#"{"data":{"result":[{"value":[1,"LEAKED-BODY-MARKER"]}]}}"#),
            "malformed",
            &["not a number", "application/json"],
        ),
        (
            "200 value not a string",
            stub(200, r#"{"data":{"result":[{"value":[1,{"LEAKED-BODY-MARKER":1}]}]}}"#),
            "malformed",
            &["not a string"],
        ),
        (
            "200 data of the wrong type",
            stub(200, r#"{"data":"LEAKED-BODY-MARKER"}"#),
            "malformed",
            &["data is not an object"],
        ),
        (
            "200 JSON with trailing garbage",
            stub(200, r#"{"data":{"result":[{"value":[1,"2"]}]}, "x": "LEAKED-BODY-MARKER" LEAKED}"#),
            "malformed",
            &["not JSON (syntax error"],
        ),
    ];
    for (name, s, kind, wants) in cases {
        let (addr, _) = serve(s.clone()).await;
        let e = poll_with(&addr, &[]).await.unwrap_err();
        let text = e.to_string();
        assert_eq!(e.kind(), *kind, "{name}: {text}");
        assert!(!text.contains(M) && !text.contains("internal admin"), "{name} leaks: {text}");
        for want in *wants {
            assert!(text.contains(want), "{name}: {text:?} lacks {want:?}");
        }
    }
}

#[tokio::test]
async fn poll_times_out_near_the_configured_timeout() {
    let mut s = stub(200, VECTOR_17);
    s.delay = Duration::from_secs(5);
    let (addr, _) = serve(s).await;
    let started = Instant::now();
    let e = poll_with(&addr, &[("timeout", "300ms")]).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e, PollError::Timeout(Duration::from_millis(300)));
    assert!(took >= Duration::from_millis(290) && took < Duration::from_millis(1500), "{took:?}");
}

#[tokio::test]
async fn poll_connection_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let e = poll_with(&format!("http://{addr}"), &[("queryParameters", "apikey=qp-SECRET")]).await.unwrap_err();
    assert_eq!(e.kind(), "connect", "{e}");
    assert!(!e.to_string().contains("qp-SECRET"), "{e}");
}

#[tokio::test]
async fn poll_sends_headers_and_auth() {
    let (addr, log) = serve(stub(200, VECTOR_17)).await;
    let cases: &[(Pairs, &str, &[&str])] = &[
        (&[("authModes", "bearer"), ("bearerToken", "tooooken")], "authorization", &["Bearer tooooken"]),
        // base64("user:pass")
        (
            &[("authModes", "basic"), ("username", "user"), ("password", "pass")],
            "authorization",
            &["Basic dXNlcjpwYXNz"],
        ),
        (&[("authModes", "basic"), ("username", "user")], "authorization", &["Basic dXNlcjo="]),
        (&[("authModes", "custom"), ("customAuthHeader", "X-Api-Key"), ("customAuthValue", "k")], "x-api-key", &["k"]),
        (&[("customHeaders", "X-Client-Id=cid,X-Tenant-Id=tid")], "x-tenant-id", &["tid"]),
        // The auth header replaces a custom header of the same name (KEDA: Add, then Set).
        (
            &[("customHeaders", "Authorization=old"), ("authModes", "bearer"), ("bearerToken", "new")],
            "authorization",
            &["Bearer new"],
        ),
        // ebb sends custom auth alongside bearer (KEDA sends only the first).
        (
            &[
                ("authModes", "bearer,custom"),
                ("bearerToken", "b"),
                ("customAuthHeader", "X-Org"),
                ("customAuthValue", "o"),
            ],
            "x-org",
            &["o"],
        ),
    ];
    for (i, (extra, header, want)) in cases.iter().enumerate() {
        assert_eq!(poll_with(&addr, extra).await, Ok(Measurement::Value(17.0)), "{extra:?}");
        let seen = log.lock().unwrap()[i].clone();
        assert_eq!(seen.header(header), *want, "{extra:?}");
    }
    assert_eq!(log.lock().unwrap()[4].header("x-client-id"), ["cid"]);
    assert_eq!(log.lock().unwrap()[6].header("authorization"), ["Bearer b"]);
}

// ---- Azure Monitor managed Prometheus ----------------------------------------------

/// A credential handing out `token`, counting calls.
/// An Azure-detected config whose URL is moved to the local stub.
fn azure_config(local: &str) -> PrometheusScaler {
    let mut s = ok(&[("serverAddress", "https://ws-1.eastus.prometheus.monitor.azure.com")]);
    assert_eq!(s.azure_scope.as_deref(), Some("https://prometheus.monitor.azure.com/.default"));
    s.query_url = query_url(local).unwrap();
    s
}

#[tokio::test]
async fn azure_managed_prometheus_sends_and_reuses_the_bearer_token() {
    let (addr, log) = serve(stub(200, VECTOR_17)).await;
    let cred = FakeCredential::new(Ok("fake-entra-token"), Duration::from_secs(3600));
    let poller = azure_config(&addr).build_poller(&ctx(), Some(cred.clone())).unwrap();
    assert_eq!(poller.poll().await, Ok(Measurement::Value(17.0)));
    assert_eq!(poller.poll().await, Ok(Measurement::Value(17.0)));
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 2);
    for seen in log.iter() {
        assert_eq!(seen.header("authorization"), ["Bearer fake-entra-token"]);
    }
    assert_eq!(cred.calls.load(Ordering::SeqCst), 1, "token reused while fresh");
    assert_eq!(*cred.scopes.lock().unwrap(), ["https://prometheus.monitor.azure.com/.default"]);
}

#[tokio::test]
async fn azure_token_near_expiry_or_rejected_is_renewed() {
    // Expires within the 60 s margin: fetched again on every poll.
    let (addr, _) = serve(stub(200, VECTOR_17)).await;
    let cred = FakeCredential::new(Ok("short"), Duration::from_secs(30));
    let poller = azure_config(&addr).build_poller(&ctx(), Some(cred.clone())).unwrap();
    poller.poll().await.unwrap();
    poller.poll().await.unwrap();
    assert_eq!(cred.calls.load(Ordering::SeqCst), 2);

    // A 401 drops the cached token.
    let (addr, _) = serve(stub(401, "token expired")).await;
    let cred = FakeCredential::new(Ok("revoked"), Duration::from_secs(3600));
    let poller = azure_config(&addr).build_poller(&ctx(), Some(cred.clone())).unwrap();
    assert_eq!(poller.poll().await.unwrap_err().kind(), "auth");
    assert_eq!(poller.poll().await.unwrap_err().kind(), "auth");
    assert_eq!(cred.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn azure_credential_failure_is_a_credential_error() {
    let (addr, log) = serve(stub(200, VECTOR_17)).await;
    let cred = FakeCredential::new(Err("AADSTS700016: application not found"), Duration::ZERO);
    let poller = azure_config(&addr).build_poller(&ctx(), Some(cred)).unwrap();
    let e = poller.poll().await.unwrap_err();
    assert_eq!(e.kind(), "credential", "{e}");
    assert!(e.to_string().contains("AADSTS700016"), "{e}");
    assert!(log.lock().unwrap().is_empty(), "no request without a token");
}

/// Issue 13: the resource URL key turns Azure auth on (KEDA parity) but never chooses where
/// the token goes or for which audience: the trigger declares both, the engine refuses them
/// (trust::Endpoints), and the token request itself refuses a non-https target.
#[tokio::test]
async fn azure_resource_url_key_is_declared_and_checked() {
    let (addr, log) = serve(stub(200, SCALAR_20)).await;
    let s = ok(&[("serverAddress", &addr), ("azureManagedPrometheusResourceURL", "https://vault.azure.net/.default")]);
    let held: [Held; 1] = s.held().try_into().unwrap();
    let [Held::Identity(u)] = held else { panic!("one identity use") };
    assert_eq!((u.service, u.audience.as_str()), (AzureService::Monitor, "https://vault.azure.net/.default"));
    assert_eq!(u.audience_key, Some("azureManagedPrometheusResourceURL"));
    assert_eq!(crate::trust::Endpoints::default().check(&u).unwrap_err().key, "serverAddress");
    // ebb's own identity is not even asked for a token towards a plain-http host.
    let e = s.build_poller(&ctx(), None).unwrap().poll().await.unwrap_err();
    assert_eq!(e.kind(), "credential", "{e}");
    assert!(log.lock().unwrap().is_empty(), "nothing sent");
    // Identity never rides on weakened or re-rooted TLS.
    let az = "https://ws-1.eastus.prometheus.monitor.azure.com";
    let e = config(&base(&[("serverAddress", az), ("unsafeSsl", "true")])).unwrap_err();
    assert_eq!(e.keys(), vec!["unsafeSsl"]);
    // Without Azure auth nothing is held.
    assert!(ok(&[("serverAddress", &addr)]).held().is_empty());
}

// ---- TLS ------------------------------------------------------------------------------

use tokio_rustls::rustls;

/// A TLS listener for `axum::serve`; failed handshakes are dropped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Serves [`VECTOR_17`] over TLS with the test server cert; `mtls` requires a client cert
/// signed by the test CA.
async fn serve_tls(mtls: bool) -> String {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(SERVER_PEM.as_bytes()).map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_slice(SERVER_KEY.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder();
    let builder = if mtls {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(CA_PEM.as_bytes()).unwrap()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build().unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(certs, key).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener { tcp, acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)) };
    let (app, _) = app(stub(200, VECTOR_17));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("https://{addr}")
}

#[tokio::test]
async fn tls_server_needs_ca_or_unsafe_ssl() {
    let addr = serve_tls(false).await;
    let e = poll_with(&addr, &[]).await.unwrap_err();
    assert_eq!(e.kind(), "connect", "{e}");
    assert_eq!(poll_with(&addr, &[("ca", CA_PEM)]).await, Ok(Measurement::Value(17.0)));
    assert_eq!(poll_with(&addr, &[("unsafeSsl", "true")]).await, Ok(Measurement::Value(17.0)));
}

#[tokio::test]
async fn mtls_sends_the_client_certificate() {
    let addr = serve_tls(true).await;
    let tls = [("authModes", "tls"), ("ca", CA_PEM), ("cert", CLIENT_PEM), ("key", CLIENT_KEY)];
    assert_eq!(poll_with(&addr, &tls).await, Ok(Measurement::Value(17.0)));
    assert!(poll_with(&addr, &[("ca", CA_PEM)]).await.is_err(), "no client cert, no answer");
}

#[test]
fn mismatched_client_key_fails_when_building_the_client() {
    // Both PEMs are well-formed, so parse accepts them; rustls checks the pair when the
    // client is built. The error names `key` and does not show it.
    let s = ok(&[("authModes", "tls"), ("cert", CLIENT_PEM), ("key", SERVER_KEY)]);
    let e = s.build_poller(&ctx(), None).unwrap_err();
    assert_eq!(e.keys(), ["key"]);
    assert!(e.to_string().contains("KeyMismatch"), "{e}");
    assert!(!e.to_string().contains(SERVER_KEY.lines().nth(1).unwrap()));
}
