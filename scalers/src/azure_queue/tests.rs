//! `azure-queue` tests: KEDA's parse table, the SAS vector, and polls against canned answers.

use super::*;
use crate::PollError;
use crate::azure::storage::DEV_KEY;
use std::collections::HashMap;
use std::time::Instant;

const CS: &str = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net";

fn md(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn parse_md(pairs: &[(&str, &str)]) -> Result<AzureQueueScaler, ConfigErrors> {
    let m = md(pairs);
    parse_config(&Metadata::new(&m))
}

/// KEDA's `testAzQueueMetadata` (azure_queue_scaler_test.go), rows adapted to ebb: KEDA's
/// `podIdentity: azure-workload` rows are ebb's `accountName` without a connection, and
/// KEDA's resolved `connectionFromEnv` arrives as a value.
#[test]
fn parse_table() {
    type Row<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
    let cases: &[Row<'_>] = &[
        ("keda: nothing passed", &[], Some("queueName")),
        ("keda: properly formed", &[("connectionFromEnv", CS), ("queueName", "sample"), ("queueLength", "5")], None),
        ("keda: empty queueName", &[("connectionFromEnv", CS), ("queueName", "")], Some("queueName")),
        (
            "keda: improperly formed queueLength",
            &[("connectionFromEnv", CS), ("queueName", "sample"), ("queueLength", "AA")],
            Some("queueLength"),
        ),
        (
            "keda: improperly formed activationQueueLength",
            &[
                ("connectionFromEnv", CS),
                ("queueName", "sample"),
                ("queueLength", "1"),
                ("activationQueueLength", "AA"),
            ],
            Some("activationQueueLength"),
        ),
        (
            "keda: azure-workload with account name",
            &[("accountName", "sample_acc"), ("queueName", "sample_queue")],
            None,
        ),
        (
            "keda: azure-workload without account name (no connection either)",
            &[("accountName", ""), ("queueName", "sample_queue")],
            Some("connection"),
        ),
        (
            "keda: azure-workload without queue name",
            &[("accountName", "sample_acc"), ("queueName", "")],
            Some("queueName"),
        ),
        (
            "keda: azure-workload with cloud",
            &[("accountName", "sample_acc"), ("queueName", "q"), ("cloud", "AzurePublicCloud")],
            None,
        ),
        (
            "keda: azure-workload with invalid cloud",
            &[("accountName", "sample_acc"), ("queueName", "q"), ("cloud", "InvalidCloud")],
            Some("cloud"),
        ),
        (
            "keda: private cloud and endpoint suffix",
            &[
                ("accountName", "a"),
                ("queueName", "q"),
                ("cloud", "Private"),
                ("endpointSuffix", "queue.core.private.cloud"),
            ],
            None,
        ),
        (
            "keda: private cloud and no endpoint suffix",
            &[("accountName", "a"), ("queueName", "q"), ("cloud", "Private"), ("endpointSuffix", "")],
            Some("endpointSuffix"),
        ),
        (
            "keda: endpoint suffix and no cloud (ignored)",
            &[("accountName", "a"), ("queueName", "q"), ("cloud", ""), ("endpointSuffix", "ignored")],
            None,
        ),
        ("keda: connection (authParams → metadata)", &[("queueName", "sample"), ("connection", CS)], None),
        (
            "keda: queueLengthStrategy all",
            &[("connection", CS), ("queueName", "s"), ("queueLengthStrategy", "all")],
            None,
        ),
        (
            "keda: queueLengthStrategy visibleonly",
            &[("connection", CS), ("queueName", "s"), ("queueLengthStrategy", "visibleonly")],
            None,
        ),
        (
            "keda: invalid queueLengthStrategy",
            &[("connection", CS), ("queueName", "s"), ("queueLengthStrategy", "invalid")],
            Some("queueLengthStrategy"),
        ),
        // ebb rules.
        (
            "ebb: queueLength 0 (HPA needs > 0)",
            &[("connection", CS), ("queueName", "s"), ("queueLength", "0")],
            Some("queueLength"),
        ),
        (
            "ebb: queueLength float (KEDA: int64)",
            &[("connection", CS), ("queueName", "s"), ("queueLength", "2.5")],
            Some("queueLength"),
        ),
        ("ebb: connectionRef", &[("connectionRef", "storage"), ("queueName", "s")], None),
        ("ebb: connectionRef with a path", &[("connectionRef", "../x"), ("queueName", "s")], Some("connectionRef")),
        ("ebb: bad connection string", &[("connection", "AccountName=a"), ("queueName", "s")], Some("connection")),
        (
            "ebb: bad account key",
            &[("connection", "AccountName=a;AccountKey=!!notbase64"), ("queueName", "s")],
            Some("connection"),
        ),
        ("ebb: accountName not a host", &[("accountName", "a b/c"), ("queueName", "s")], Some("accountName")),
    ];
    for (name, pairs, want) in cases {
        match (parse_md(pairs), want) {
            (Ok(_), None) => {}
            (Err(e), Some(key)) => assert!(e.keys().contains(key), "{name}: wanted {key}, got {e}"),
            (Ok(s), Some(key)) => panic!("{name}: wanted an error on {key}, parsed {s:?}"),
            (Err(e), None) => panic!("{name}: unexpected error {e}"),
        }
    }
}

#[test]
fn defaults_and_evaluation() {
    let s = parse_md(&[("connection", CS), ("queueName", "orders")]).unwrap();
    assert_eq!(s.target(), 5.0);
    assert_eq!(s.strategy, Strategy::All);
    assert_eq!(s.poll_timeout(), DEFAULT_TIMEOUT);
    assert_eq!(s.evaluate(&Measurement::Value(0.0)), Evaluation { metric: 0.0, active: false });
    assert_eq!(s.evaluate(&Measurement::Value(1.0)), Evaluation { metric: 1.0, active: true });
    let s = parse_md(&[("connection", CS), ("queueName", "o"), ("activationQueueLength", "7"), ("queueLength", "3")])
        .unwrap();
    assert_eq!(s.target(), 3.0);
    assert!(!s.evaluate(&Measurement::Value(7.0)).active, "strictly greater than activationQueueLength");
    assert!(s.evaluate(&Measurement::Value(8.0)).active);
    let s = parse_md(&[("connection", CS), ("queueName", "o"), ("queueLengthStrategy", "VisibleOnly")]).unwrap();
    assert_eq!(s.strategy, Strategy::VisibleOnly);
}

#[test]
fn errors_never_echo_secrets() {
    let secret = "AccountName=a;AccountKey=c2VjcmV0LXNlY3JldA==;Bogus";
    let e = parse_md(&[("connection", secret), ("queueName", "q")]).unwrap_err();
    assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
    let e = parse_md(&[("connection", "AccountName=a;AccountKey=%%secret%%"), ("queueName", "q")]).unwrap_err();
    assert!(!e.to_string().contains("secret%%"), "{e}");
    let s = parse_md(&[("connection", CS), ("queueName", "q")]).unwrap();
    assert!(!format!("{s:?}").contains("a2V5"));
}

/// A loopback server answering every request with `answer` (or never, when `None`).
async fn canned(answer: Option<&'static str>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                match answer {
                    Some(a) => {
                        let _ = sock.write_all(a.as_bytes()).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(10)).await,
                }
            });
        }
    });
    port
}

async fn poll_against(port: u16) -> Result<Measurement, PollError> {
    let cs = format!(
        "AccountName=devstoreaccount1;AccountKey={DEV_KEY};QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1"
    );
    let s = parse_md(&[("connection", &cs), ("queueName", "q")]).unwrap();
    crate::poll_once(&s).await
}

#[tokio::test]
async fn throttling_and_timeouts_are_typed() {
    for (status, reason) in [(503, "Service Unavailable"), (429, "Too Many Requests")] {
        let answer: &'static str = Box::leak(
            format!("HTTP/1.1 {status} {reason}\r\nx-ms-error-code: ServerBusy\r\ncontent-length: 0\r\n\r\n")
                .into_boxed_str(),
        );
        let e = poll_against(canned(Some(answer)).await).await.unwrap_err();
        assert!(e.is_throttling(), "{status}: {e:?}");
        assert!(!e.to_string().contains("sig="), "{e}");
    }
    let t0 = Instant::now();
    let e = poll_against(canned(None).await).await.unwrap_err();
    assert_eq!(e, PollError::Timeout(DEFAULT_TIMEOUT));
    assert!(t0.elapsed() < DEFAULT_TIMEOUT + Duration::from_secs(1));
}

/// The connection string (hence the host) is the caller's, so an answer may be any internal
/// page. The SDK's error `Display` is the whole body: no error may show it, nor a value
/// parsed out of the answer; only the status, Storage's error code, the type and the size.
#[tokio::test]
async fn poll_errors_never_quote_the_answer() {
    const M: &str = "LEAKED-BODY-MARKER";
    fn answer(status: &str, headers: &str, ct: &str, body: &str) -> &'static str {
        let len = body.len();
        let raw = format!("HTTP/1.1 {status}\r\n{headers}content-type: {ct}\r\ncontent-length: {len}\r\n\r\n{body}");
        Box::leak(raw.into_boxed_str())
    }
    const HTML: &str = "<html><body>LEAKED-BODY-MARKER internal admin</body></html>";
    const XML_ERROR: &str = r#"<?xml version="1.0" encoding="utf-8"?><Error><Code>QueueNotFound</Code><Message>LEAKED-BODY-MARKER</Message></Error>"#;
    let cases: &[(&str, &'static str, &str, &str, &[&str])] = &[
        (
            "500 html",
            answer("500 Internal Server Error", "", "text/html", HTML),
            "all",
            "http",
            &["text/html, 59 bytes"],
        ),
        (
            "403 storage error with header",
            answer("403 Forbidden", "x-ms-error-code: AuthenticationFailed\r\n", "application/xml", XML_ERROR),
            "all",
            "auth",
            &["HTTP 403", "error code AuthenticationFailed (application/xml"],
        ),
        (
            "404 storage XML error",
            answer("404 Not Found", "", "application/xml", XML_ERROR),
            "all",
            "not_found",
            &["error code QueueNotFound (application/xml"],
        ),
        (
            "400 JSON error whose code is not one",
            answer(
                "400 Bad Request",
                "",
                "application/json",
                r#"{"error":{"code":"LEAKED-BODY-MARKER","message":"x"}}"#,
            ),
            "all",
            "http",
            &["HTTP 400", "application/json, 53 bytes"],
        ),
        (
            "503 with a bad x-ms-error-code",
            answer("503 Service Unavailable", "x-ms-error-code: LEAKED-BODY-MARKER\r\n", "text/html", HTML),
            "all",
            "throttled",
            &["HTTP 503", "text/html, 59 bytes"],
        ),
        (
            "200 count not a number",
            answer("200 OK", "x-ms-approximate-messages-count: LEAKED-BODY-MARKER\r\n", "text/plain", ""),
            "all",
            "malformed",
            &["x-ms-approximate-messages-count is not an integer"],
        ),
        (
            "200 peek answer not XML",
            answer("200 OK", "", "text/html", "<html><LEAKED-BODY-MARKER>internal admin</html>"),
            "visibleonly",
            "malformed",
            &["not a message list (text/html, 47 bytes)"],
        ),
        (
            "200 peek answer of the wrong shape",
            answer(
                "200 OK",
                "",
                "application/xml",
                "<QueueMessagesList><QueueMessage><DequeueCount>LEAKED-BODY-MARKER</DequeueCount></QueueMessage></QueueMessagesList>",
            ),
            "visibleonly",
            "malformed",
            &["not a message list (application/xml"],
        ),
    ];
    for (name, raw, strategy, kind, wants) in cases {
        let port = canned(Some(raw)).await;
        let cs = format!(
            "AccountName=devstoreaccount1;AccountKey={DEV_KEY};QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1"
        );
        let s = parse_md(&[("connection", &cs), ("queueName", "q"), ("queueLengthStrategy", strategy)]).unwrap();
        let e = crate::poll_once(&s).await.unwrap_err();
        let text = e.to_string();
        assert_eq!(e.kind(), *kind, "{name}: {text}");
        assert!(!text.contains(M) && !text.contains("internal admin") && !text.contains("sig="), "{name}: {text}");
        for want in *wants {
            assert!(text.contains(want), "{name}: {text:?} lacks {want:?}");
        }
    }
}

#[test]
fn source_keys() {
    let a = parse_md(&[("connection", CS), ("queueName", "orders"), ("queueLength", "3")]).unwrap();
    let b = parse_md(&[("connectionFromEnv", CS), ("queueName", "orders"), ("activationQueueLength", "9")]).unwrap();
    assert_eq!(a.source_key(), b.source_key(), "thresholds are not part of the key");
    let k = &a.source_key().0;
    assert!(k.starts_with("azure-queue|https://acct.queue.core.windows.net/|orders|all|value:"), "{k}");
    assert!(!k.contains("a2V5"));
    let v = parse_md(&[("connection", CS), ("queueName", "orders"), ("queueLengthStrategy", "visibleonly")]).unwrap();
    assert_ne!(a.source_key(), v.source_key());
    let other = parse_md(&[("connection", &CS.replace("a2V5", "a2V6")), ("queueName", "orders")]).unwrap();
    assert_ne!(a.source_key(), other.source_key(), "a different key is a different credential");
    let id = parse_md(&[("accountName", "acct"), ("queueName", "orders")]).unwrap();
    assert_eq!(id.source_key().0, "azure-queue|https://acct.queue.core.windows.net|orders|all|identity");
    assert_eq!(id.access, Access::Identity(Url::parse("https://acct.queue.core.windows.net/orders").unwrap()));
    let gov = parse_md(&[("accountName", "acct"), ("queueName", "o"), ("cloud", "AzureUSGovernmentCloud")]).unwrap();
    assert!(gov.source_key().0.contains("https://acct.queue.core.usgovcloudapi.net|"), "{}", gov.source_key());
    let private = parse_md(&[
        ("accountName", "acct"),
        ("queueName", "o"),
        ("cloud", "Private"),
        ("endpointSuffix", "queue.azs.local"),
    ])
    .unwrap();
    assert!(private.source_key().0.contains("https://acct.queue.azs.local|"), "{}", private.source_key());
    let named = parse_md(&[("connectionRef", "storage"), ("queueName", "o")]).unwrap();
    assert_eq!(named.source_key().0, "azure-queue|ref:storage|o|all|ref:storage");
}
