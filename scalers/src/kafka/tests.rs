//! Table tests of the `kafka` trigger. Each case names the rule of KEDA's `kafka_scaler.go` it
//! checks (`Validate`, `getLagForPartition`, `getTotalLag`).

use std::collections::HashMap;

use super::*;

fn md(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn parse_map(pairs: &[(&str, &str)]) -> Result<KafkaScaler, ConfigErrors> {
    let mut m = md(&[("bootstrapServers", "127.0.0.1:9092"), ("consumerGroup", "g")]);
    m.extend(md(pairs));
    parse_config(&Metadata::new(&m))
}

/// `(rule, partitions, rules, (metric, lag with persistent))`.
type LagCase = (&'static str, Vec<PartitionOffsets>, LagRules, (i64, i64));
/// `(rule, metadata, key at fault)`.
type ErrorCase = (&'static str, &'static [(&'static str, &'static str)], &'static str);

fn part(partition: i32, committed: Option<i64>, latest: i64) -> PartitionOffsets {
    PartitionOffsets { topic: "t".into(), partition, committed, latest, unchanged: false }
}

#[test]
fn partition_lag_rules() {
    let r = LagRules::default();
    let earliest = LagRules { offset_reset: OffsetReset::Earliest, ..r };
    let stz = LagRules { scale_to_zero_on_invalid_offset: true, ..r };
    let earliest_stz = LagRules { scale_to_zero_on_invalid_offset: true, ..earliest };
    let persistent = LagRules { exclude_persistent_lag: true, ..r };
    let unchanged = PartitionOffsets { unchanged: true, ..part(0, Some(4), 10) };
    #[rustfmt::skip]
    let cases: &[(&str, PartitionOffsets, LagRules, (i64, i64))] = &[
        ("committed: latest - committed", part(0, Some(4), 10), r, (6, 6)),
        ("no commit, policy latest: 1", part(0, None, 10), r, (1, 1)),
        ("no commit, policy latest, scaleToZeroOnInvalidOffset: 0", part(0, None, 10), stz, (0, 0)),
        ("no commit, policy earliest: the log-end offset", part(0, None, 10), earliest, (10, 10)),
        ("no commit, policy earliest, scaleToZeroOnInvalidOffset: 0", part(0, None, 10), earliest_stz, (0, 0)),
        ("ebb: committed past the log end is 0, not negative", part(0, Some(12), 10), r, (0, 0)),
        ("excludePersistentLag, offset unchanged: 0 for the metric, full for activation", unchanged.clone(), persistent, (0, 6)),
        ("excludePersistentLag off: unchanged offsets count", unchanged, r, (6, 6)),
        ("excludePersistentLag, offset moved: counts", part(0, Some(4), 10), persistent, (6, 6)),
    ];
    for (rule, p, rules, want) in cases {
        assert_eq!(partition_lag(p, rules), *want, "{rule}");
    }
}

#[test]
fn total_lag_rules() {
    let r = LagRules::default(); // lagThreshold 10
    let three = |a: i64, b: i64, c: i64| vec![part(0, Some(0), a), part(1, Some(0), b), part(2, Some(0), c)];
    let idle = LagRules { allow_idle_consumers: true, ..r };
    let with_lag = LagRules { limit_to_partitions_with_lag: true, ..r };
    let even = LagRules { ensure_even_distribution: true, ..r };
    let even_idle = LagRules { ensure_even_distribution: true, allow_idle_consumers: true, ..r };
    let six: Vec<_> = (0..6).map(|p| part(p, Some(0), 3)).collect(); // 18 over 6 partitions
    #[rustfmt::skip]
    let cases: &[LagCase] = &[
        ("sum below the cap", three(5, 5, 5), r, (15, 15)),
        ("capped at partitions × lagThreshold when lag/threshold > partitions", three(100, 0, 0), r, (30, 100)),
        ("integer division: 39/10 = 3 is not > 3, no cap", three(39, 0, 0), r, (39, 39)),
        ("40/10 = 4 > 3: capped to 30", three(40, 0, 0), r, (30, 40)),
        ("allowIdleConsumers: no cap", three(100, 0, 0), idle, (100, 100)),
        ("limitToPartitionsWithLag: cap at partitions with lag (1)", three(100, 0, 0), with_lag, (10, 100)),
        ("ensureEvenDistribution: 18 over 6 partitions → factor 2 → 20", six.clone(), even, (20, 18)),
        ("ensureEvenDistribution with allowIdleConsumers still applies", six, even_idle, (20, 18)),
        ("ensureEvenDistribution: 45 over 3 → no divisor reaches it → 3 → 30", three(45, 0, 0), even, (30, 45)),
        ("ensureEvenDistribution with no lag: factor 1 → lagThreshold (KEDA)", three(0, 0, 0), even, (10, 0)),
        ("no partitions: 0", vec![], r, (0, 0)),
    ];
    for (rule, parts, rules, want) in cases {
        assert_eq!(total_lag(parts, rules), *want, "{rule}");
    }
}

#[test]
fn even_factor_is_the_smallest_sufficient_divisor() {
    // FindFactors(12) = 1,2,3,4,6,12.
    assert_eq!(even_factor(25, 12, 10), 3);
    assert_eq!(even_factor(41, 12, 10), 6);
    assert_eq!(even_factor(500, 12, 10), 12);
    assert_eq!(even_factor(0, 0, 10), 0);
}

#[test]
fn partition_limitation_parsing() {
    assert_eq!(parse_partition_limitation("1,2,10-12").unwrap(), vec![1..=1, 2..=2, 10..=12]);
    assert_eq!(parse_partition_limitation(" 3 - 4 ").unwrap(), vec![3..=4]);
    // KEDA: a reversed range selects nothing.
    assert!(parse_partition_limitation("5-3").unwrap()[0].is_empty());
    for bad in ["a", "1-2-3", "-1", "1,,2", "3000000000"] {
        assert!(parse_partition_limitation(bad).is_err(), "{bad}");
    }
    assert!(parse_partition_limitation("0-2000000000").unwrap_err().contains("too wide"));
}

#[test]
fn parse_defaults() {
    let s = parse_map(&[("topic", "orders")]).unwrap();
    assert_eq!(s.rules, LagRules::default());
    assert_eq!(s.target(), 10.0);
    assert_eq!(s.target.connection.bootstrap_servers, vec!["127.0.0.1:9092"]);
    assert!(s.target.connection.tls.is_none() && s.target.connection.sasl.is_none());
    assert!(s.source_key.0.starts_with("kafka|127.0.0.1:9092|"), "{}", s.source_key);
    assert!(s.source_key.0.ends_with("|g|orders|all"), "{}", s.source_key);
}

#[test]
fn parse_errors_name_the_key() {
    #[rustfmt::skip]
    let cases: &[ErrorCase] = &[
        ("Validate: lagThreshold must be positive", &[("lagThreshold", "0")], "lagThreshold"),
        ("typed config: lagThreshold is an integer", &[("lagThreshold", "1.5")], "lagThreshold"),
        ("Validate: activationLagThreshold must be non-negative", &[("activationLagThreshold", "-1")], "activationLagThreshold"),
        ("enum: offsetResetPolicy latest|earliest", &[("offsetResetPolicy", "oldest")], "offsetResetPolicy"),
        ("typed config: booleans", &[("allowIdleConsumers", "yes")], "allowIdleConsumers"),
        ("parsePartitionLimitation", &[("topic", "t"), ("partitionLimitation", "1-x")], "partitionLimitation"),
        ("Validate: allowIdleConsumers and limitToPartitionsWithLag exclusive",
            &[("topic", "t"), ("allowIdleConsumers", "true"), ("limitToPartitionsWithLag", "true")], "limitToPartitionsWithLag"),
        ("Validate: limitToPartitionsWithLag needs topic", &[("limitToPartitionsWithLag", "true")], "limitToPartitionsWithLag"),
        ("Validate: limitToPartitionsWithLag and ensureEven… exclusive",
            &[("topic", "t"), ("limitToPartitionsWithLag", "true"), ("ensureEvenDistributionOfPartitions", "true")],
            "ensureEvenDistributionOfPartitions"),
        ("Validate: ensureEven… needs topic", &[("ensureEvenDistributionOfPartitions", "true")], "ensureEvenDistributionOfPartitions"),
        ("Validate: fullMetadata=false needs topic", &[("fullMetadata", "false")], "fullMetadata"),
        ("sarama.ParseKafkaVersion", &[("version", "latest")], "version"),
        ("enum: tls enable|disable", &[("tls", "on")], "tls"),
        ("parseTLS: cert needs key", &[("tls", "enable"), ("cert", CERT)], "key"),
        ("parseTLS: key needs cert", &[("tls", "enable"), ("key", KEY)], "cert"),
        ("ebb: ca must be PEM", &[("tls", "enable"), ("ca", "not a cert")], "ca"),
        ("enum: sasl", &[("sasl", "kerberos")], "sasl"),
        ("parseSASL: plaintext needs username", &[("sasl", "plaintext"), ("password", "p")], "username"),
        ("parseSASL: scram needs password", &[("sasl", "scram_sha512"), ("username", "u")], "password"),
        ("parseOAuthParams: bearer needs oauthTokenEndpointUri",
            &[("sasl", "oauthbearer"), ("username", "u"), ("password", "p")], "oauthTokenEndpointUri"),
        ("parseOAuthParams: extensions key=value",
            &[("sasl", "oauthbearer"), ("username", "u"), ("password", "p"),
              ("oauthTokenEndpointUri", "https://idp/token"), ("oauthExtensions", "a=b,c")], "oauthExtensions"),
        ("ebb: aws_msk_iam refused", &[("sasl", "oauthbearer"), ("saslTokenProvider", "aws_msk_iam")], "saslTokenProvider"),
        ("ebb: gssapi refused", &[("sasl", "gssapi")], "sasl"),
    ];
    for (rule, pairs, key) in cases {
        let e = parse_map(pairs).unwrap_err();
        assert_eq!(e.keys(), vec![*key], "{rule}: {e}");
    }
    let e = parse_config(&Metadata::new(&HashMap::new())).unwrap_err();
    assert_eq!(e.keys(), vec!["bootstrapServers", "consumerGroup"]);
}

#[test]
fn partition_limitation_is_ignored_without_topic() {
    // KEDA: `if m.Topic == "" { m.PartitionLimitation = nil }`.
    let s = parse_map(&[("partitionLimitation", "1,2")]).unwrap();
    assert!(s.target.partitions.is_none());
    assert!(s.source_key.0.ends_with("|g|*|all"));
    let s = parse_map(&[("topic", "t"), ("partitionLimitation", "2,0-1")]).unwrap();
    assert!(s.target.wants(0) && s.target.wants(2) && !s.target.wants(3));
    assert!(s.source_key.0.ends_with("|g|t|2-2,0-1"), "{}", s.source_key);
}

#[test]
fn security_settings() {
    let s = parse_map(&[
        ("tls", "enable"),
        ("ca", CERT),
        ("cert", CERT),
        ("key", KEY),
        ("unsafeSsl", "true"),
        ("sasl", "scram_sha256"),
        ("username", "u"),
        ("password", " p w "),
    ])
    .unwrap();
    let c = &s.target.connection;
    let tls = c.tls.as_ref().unwrap();
    assert!(tls.unsafe_ssl && tls.ca.is_some() && tls.cert.is_some());
    assert_eq!(c.sasl, Some(Sasl::ScramSha256 { username: "u".into(), password: " p w ".into() }));
    // No secret in Debug, in the source key or in the client key.
    let shown = format!("{s:?}");
    assert!(!shown.contains(" p w ") && !shown.contains("PRIVATE KEY"), "{shown}");
    assert!(!s.source_key.0.contains("p w"));
    // tls: disable ignores the PEMs (KEDA reads them only with enable).
    let s = parse_map(&[("tls", "disable"), ("ca", "garbage")]).unwrap();
    assert!(s.target.connection.tls.is_none());
    // Different credentials, different clients; same credentials, same key.
    let a = parse_map(&[("sasl", "plaintext"), ("username", "u"), ("password", "one")]).unwrap();
    let b = parse_map(&[("sasl", "plaintext"), ("username", "u"), ("password", "two")]).unwrap();
    let a2 = parse_map(&[("sasl", "plaintext"), ("username", "u"), ("password", "one"), ("topic", "x")]).unwrap();
    assert_ne!(a.target.connection.key(), b.target.connection.key());
    assert_eq!(a.target.connection.key(), a2.target.connection.key());
}

#[test]
fn event_hubs_kafka_endpoint() {
    // Azure Event Hubs' Kafka endpoint: SASL PLAIN with `$ConnectionString` over TLS.
    let s = parse_map(&[
        ("bootstrapServers", "ns.servicebus.windows.net:9093"),
        ("tls", "enable"),
        ("sasl", "plaintext"),
        ("username", "$ConnectionString"),
        ("password", "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=secret"),
    ])
    .unwrap();
    assert_eq!(s.target.connection.sasl.as_ref().unwrap().mechanism(), "PLAIN");
    assert!(s.target.connection.tls.as_ref().is_some_and(|t| t.ca.is_none()));
}

#[test]
fn evaluate_applies_the_trigger_rules_to_a_shared_poll() {
    let parts: Arc<[PartitionOffsets]> =
        vec![part(0, Some(0), 100), PartitionOffsets { unchanged: true, ..part(1, Some(5), 25) }].into();
    let m = Measurement::Offsets(parts);
    // Default: 120 > 2 × 10 ⇒ capped at 20; active.
    let s = parse_map(&[("topic", "t")]).unwrap();
    assert_eq!(s.evaluate(&m), Evaluation { metric: 20.0, active: true });
    let s = parse_map(&[("topic", "t"), ("allowIdleConsumers", "true"), ("activationLagThreshold", "120")]).unwrap();
    assert_eq!(s.evaluate(&m), Evaluation { metric: 120.0, active: false });
    // excludePersistentLag: partition 1 (unchanged) leaves the metric but still activates.
    let s = parse_map(&[
        ("topic", "t"),
        ("allowIdleConsumers", "true"),
        ("excludePersistentLag", "true"),
        ("activationLagThreshold", "110"),
    ])
    .unwrap();
    assert_eq!(s.evaluate(&m), Evaluation { metric: 100.0, active: true });
}

#[tokio::test]
async fn client_credentials_token() {
    use axum::{Router, extract::Form, http::HeaderMap, routing::post};
    async fn token(headers: HeaderMap, Form(f): Form<HashMap<String, String>>) -> (axum::http::StatusCode, String) {
        use base64::Engine;
        let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("id:s3cret"));
        let auth_ok = headers.get("authorization").is_some_and(|v| v == want.as_str());
        let form_ok = f.get("grant_type").map(String::as_str) == Some("client_credentials")
            && f.get("scope").map(String::as_str) == Some("a b");
        if auth_ok && form_ok {
            (axum::http::StatusCode::OK, r#"{"access_token":"tok","token_type":"bearer","expires_in":60}"#.into())
        } else {
            (axum::http::StatusCode::UNAUTHORIZED, r#"{"error":"invalid_client"}"#.into())
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, Router::new().route("/token", post(token))).await });
    let http = reqwest::Client::new();
    let mut o = OAuth {
        client_id: "id".into(),
        client_secret: "s3cret".into(),
        token_url: Url::parse(&url).unwrap(),
        scopes: vec!["a".into(), "b".into()],
        extensions: vec![],
    };
    let t = fetch_token(&http, &o, 1_000).await.unwrap();
    assert_eq!((t.value.as_str(), t.expires_at_ms), ("tok", 61_000));
    o.client_secret = "wrong".into();
    let e = fetch_token(&http, &o, 0).await.unwrap_err();
    assert!(matches!(e, PollError::Auth { status: 401, .. }), "{e}");
    assert!(!e.to_string().contains("wrong"));
    assert_eq!(
        e.to_string(),
        "authentication failed (HTTP 401): token endpoint: invalid_client (text/plain, 26 bytes)"
    );
}

/// The caller chooses `tokenUrl`, so its answer may be any internal page: token errors name the
/// status, the OAuth error code, the type and the size, never the body or values out of it.
#[tokio::test]
async fn token_errors_never_quote_the_answer() {
    const M: &str = "LEAKED-BODY-MARKER";
    let cases: &[(u16, &str, &str, &str, &[&str])] = &[
        (500, "text/html", "<html>LEAKED-BODY-MARKER internal</html>", "http", &["HTTP 500", "text/html, 40 bytes"]),
        (403, "text/html", "<h1>LEAKED-BODY-MARKER</h1>", "auth", &["HTTP 403", "text/html"]),
        (
            400,
            "application/json",
            r#"{"error":"invalid_grant","error_description":"LEAKED-BODY-MARKER"}"#,
            "http",
            &["HTTP 400", "invalid_grant (application/json"],
        ),
        (400, "application/json", r#"{"error":"LEAKED-BODY-MARKER"}"#, "http", &["application/json, 30 bytes"]),
        (200, "text/html", "<html>LEAKED-BODY-MARKER</html>", "malformed", &["no access_token", "text/html, 31 bytes"]),
        (200, "application/json", r#"{"access_token":["LEAKED-BODY-MARKER"]}"#, "malformed", &["no access_token"]),
    ];
    for (status, ct, body, kind, wants) in cases {
        let (status, ct, body) = (*status, *ct, *body);
        let app = axum::Router::new().fallback(move || async move {
            axum::http::Response::builder().status(status).header("content-type", ct).body(body.to_owned()).unwrap()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let o = OAuth {
            client_id: "id".into(),
            client_secret: "s3cret".into(),
            token_url: Url::parse(&url).unwrap(),
            scopes: vec![],
            extensions: vec![],
        };
        let e = fetch_token(&reqwest::Client::new(), &o, 0).await.unwrap_err();
        let text = e.to_string();
        assert_eq!(e.kind(), *kind, "{status} {body}: {text}");
        assert!(!text.contains(M) && !text.contains("internal"), "{status} {body}: {text}");
        for want in *wants {
            assert!(text.contains(want), "{status} {body}: {text:?} lacks {want:?}");
        }
    }
}

const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBdzCCAR2gAwIBAgIUPlQ7OJMxZ5LNMVVVPBs9aUfNHSgwCgYIKoZIzj0EAwIw
ETEPMA0GA1UEAwwGZWJiLWNhMB4XDTI2MTEyMjAwMDAwMFoXDTM2MTEyMjAwMDAw
MFowETEPMA0GA1UEAwwGZWJiLWNhMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
-----END CERTIFICATE-----";

const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg
-----END PRIVATE KEY-----";
