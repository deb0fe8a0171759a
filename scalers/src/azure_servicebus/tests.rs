//! `azure-servicebus` tests: KEDA's parse table, ATOM fixtures, and polls against a local
//! server answering as the management API does.

use super::*;
use crate::azure::namespace::error_detail;
use crate::azure::token::fake::FakeCredential;
use std::collections::HashMap;
use std::sync::Mutex;

fn ctx() -> Arc<ScalerContext> {
    Arc::new(ScalerContext::default())
}

/// Metadata entries in a table row.
type Pairs = &'static [(&'static str, &'static str)];

const CONN: &str = "Endpoint=sb://ebb-test.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=k3y-s3cr3t-value=";

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn config(pairs: &[(&str, &str)]) -> Result<ServiceBusScaler, ConfigErrors> {
    parse_config(&Metadata::new(&map(pairs)))
}

fn fixture(name: &str) -> String {
    let path = format!("{}/../tests/fixtures/servicebus/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// KEDA `parseServiceBusMetadataDataset` rows (azure_servicebus_scaler_test.go), then ebb's
/// own. `None` = valid; `Some(key)` = the key the error must name.
#[test]
fn parse_table() {
    let c = ("connection", CONN);
    type Row<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
    let rows: &[Row] = &[
        ("KEDA row 1: empty metadata", &[], Some("queueName")),
        ("KEDA row 2: properly formed queue", &[("queueName", "q"), c], None),
        ("KEDA row 3: topic and subscription", &[("topicName", "t"), ("subscriptionName", "s"), c], None),
        ("KEDA row 4: queue and topic", &[("queueName", "q"), ("topicName", "t"), c], Some("topicName")),
        (
            "KEDA row 5: queue and subscription",
            &[("queueName", "q"), ("subscriptionName", "s"), c],
            Some("subscriptionName"),
        ),
        ("KEDA row 6: topic without subscription", &[("topicName", "t"), c], Some("subscriptionName")),
        ("KEDA row 7: subscription without topic", &[("subscriptionName", "s"), c], Some("topicName")),
        ("KEDA row 8: connection not set", &[("queueName", "q")], Some("connection")),
        ("KEDA row 9: connection resolved from env", &[("queueName", "q"), ("connectionFromEnv", CONN)], None),
        ("KEDA row 10: identity without namespace", &[("queueName", "q")], Some("connection")),
        ("KEDA row 11: identity with namespace", &[("queueName", "q"), ("namespace", "ns")], None),
        ("named secret", &[("queueName", "q"), ("connectionRef", "sb-conn")], None),
        ("named secret with a path", &[("queueName", "q"), ("connectionRef", "../x")], Some("connectionRef")),
        ("messageCount not an integer", &[("queueName", "q"), c, ("messageCount", "ten")], Some("messageCount")),
        ("messageCount 0 (ebb deviation)", &[("queueName", "q"), c, ("messageCount", "0")], Some("messageCount")),
        (
            "activation not an integer",
            &[("queueName", "q"), c, ("activationMessageCount", "1.5")],
            Some("activationMessageCount"),
        ),
        ("useRegex not a bool", &[("queueName", "q"), c, ("useRegex", "yes")], Some("useRegex")),
        ("bad queue regex", &[("queueName", "orders-("), c, ("useRegex", "true")], Some("queueName")),
        (
            "regex unbalanced but balanced once wrapped",
            &[("queueName", "a)(b"), c, ("useRegex", "true")],
            Some("queueName"),
        ),
        (
            "bad subscription regex",
            &[("topicName", "t"), ("subscriptionName", "["), c, ("useRegex", "true")],
            Some("subscriptionName"),
        ),
        ("KEDA enum operation", &[("queueName", "q"), c, ("operation", "median")], Some("operation")),
        ("operation avg", &[("queueName", "q.*"), c, ("useRegex", "true"), ("operation", "AVG")], None),
        ("bad cloud", &[("queueName", "q"), ("namespace", "ns"), ("cloud", "Mars")], Some("cloud")),
        (
            "private cloud without suffix",
            &[("queueName", "q"), ("namespace", "ns"), ("cloud", "Private")],
            Some("endpointSuffix"),
        ),
        ("bad namespace", &[("queueName", "q"), ("namespace", "ns/x")], Some("namespace")),
        (
            "connection without Endpoint",
            &[("queueName", "q"), ("connection", "SharedAccessKeyName=a;SharedAccessKey=b")],
            Some("connection"),
        ),
        (
            "connection without key",
            &[("queueName", "q"), ("connection", "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=a")],
            Some("connection"),
        ),
        (
            "env connection not a connection string",
            &[("queueName", "q"), ("connectionFromEnv", "hunter2")],
            Some("connectionFromEnv"),
        ),
    ];
    for (what, pairs, want) in rows {
        match (config(pairs), want) {
            (Ok(_), None) => {}
            (Ok(s), Some(key)) => panic!("{what}: expected an error naming {key}, got {s:?}"),
            (Err(e), None) => panic!("{what}: expected success, got {e}"),
            (Err(e), Some(key)) => assert!(e.keys().contains(key), "{what}: errors {e} should name {key}"),
        }
    }
}

#[test]
fn defaults_and_modes() {
    let s = config(&[("queueName", "orders"), ("connection", CONN)]).unwrap();
    assert_eq!(s.target(), 5.0, "KEDA default messageCount");
    assert_eq!(s.activation_message_count, 0);
    assert_eq!(s.operation, Operation::Sum);
    assert!(s.regex.is_none());
    assert_eq!(s.poll_timeout(), DEFAULT_TIMEOUT);
    assert_eq!(s.entity, Entity::Queue("orders".into()));
    let s = config(&[("topicName", "t"), ("subscriptionName", "s.*"), ("useRegex", "1"), ("namespace", "ns")]).unwrap();
    assert!(s.regex.is_some());
    assert_eq!(s.poll_timeout(), DEFAULT_TIMEOUT * REGEX_POLL_TIMEOUT_FACTOR);
    match &s.auth {
        Auth::Identity { host, .. } => assert_eq!(host, "ns.servicebus.windows.net"),
        a => panic!("{a:?}"),
    }
    let s = config(&[("queueName", "q"), ("namespace", "ns"), ("cloud", "AzureChinaCloud")]).unwrap();
    assert!(
        matches!(&s.auth, Auth::Identity { host, host_key: "namespace" } if host == "ns.servicebus.chinacloudapi.cn")
    );
    let s = config(&[("queueName", "q"), ("namespace", "ns"), ("cloud", "Private"), ("endpointSuffix", "sb.local")])
        .unwrap();
    assert!(matches!(&s.auth, Auth::Identity { host, host_key: "endpointSuffix" } if host == "ns.sb.local"));
}

#[test]
fn regex_is_full_match() {
    let s = config(&[("queueName", "orders-.*|audit"), ("useRegex", "true"), ("connection", CONN)]).unwrap();
    let re = s.regex.unwrap();
    for (name, want) in
        [("orders-eu", true), ("audit", true), ("xorders-eu", false), ("audit2", false), ("orders", false)]
    {
        assert_eq!(re.is_match(name), want, "{name}");
    }
}

#[test]
fn operations_follow_keda() {
    assert_eq!(Operation::Sum.apply(&[1, 2, 4]), 7);
    assert_eq!(Operation::Max.apply(&[1, 9, 4]), 9);
    assert_eq!(Operation::Avg.apply(&[1, 2, 4]), 2, "integer division");
    for op in [Operation::Sum, Operation::Max, Operation::Avg] {
        assert_eq!(op.apply(&[]), 0, "{op:?} of no match");
    }
}

#[test]
fn source_key_ignores_thresholds_and_hides_secrets() {
    let a = config(&[("queueName", "orders"), ("connection", CONN), ("messageCount", "10")]).unwrap();
    let b = config(&[("queueName", "orders"), ("connection", CONN), ("activationMessageCount", "3")]).unwrap();
    assert_eq!(a.source_key(), b.source_key());
    let k = a.source_key().0.clone();
    assert!(k.starts_with("azure-servicebus|ebb-test.servicebus.windows.net|queue:orders|single|value:"), "{k}");
    assert!(!k.contains("k3y-s3cr3t"), "{k}");
    assert!(!format!("{a:?}").contains("k3y-s3cr3t"));
    let other = CONN.replace("k3y", "key");
    let c = config(&[("queueName", "orders"), ("connection", &other)]).unwrap();
    assert_ne!(a.source_key(), c.source_key(), "another key is another source");
    let r =
        config(&[("queueName", "orders.*"), ("useRegex", "true"), ("operation", "max"), ("connection", CONN)]).unwrap();
    assert!(r.source_key().0.contains("|queue~orders.*|max|"), "{}", r.source_key());
    let n = config(&[("topicName", "t"), ("subscriptionName", "s"), ("connectionRef", "sb")]).unwrap();
    assert_eq!(n.source_key().0, "azure-servicebus|ref:sb|topic:t/subscription:s|single|ref:sb");
    let i = config(&[("queueName", "q"), ("namespace", "ns")]).unwrap();
    assert_eq!(i.source_key().0, "azure-servicebus|ns.servicebus.windows.net|queue:q|single|identity");
}

#[test]
fn config_errors_never_echo_the_connection() {
    let secret = "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=n;SharedAccessKeyy=hunter2";
    let e = config(&[("queueName", "q"), ("connection", secret)]).unwrap_err();
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

#[test]
fn atom_fixtures() {
    let q = parse_atom(&fixture("queue.xml")).unwrap();
    assert_eq!(q.entries.len(), 1);
    assert_eq!(q.entries[0].title, "orders");
    assert_eq!(q.entries[0].active_count("q").unwrap(), 42, "ActiveMessageCount, not MessageCount (50)");
    let s = parse_atom(&fixture("subscription.xml")).unwrap();
    assert_eq!(s.entries[0].title, "billing");
    assert_eq!(s.entries[0].active_count("s").unwrap(), 7, "d3p1 prefix");
    let p1 = parse_atom(&fixture("queues-page1.xml")).unwrap();
    assert!(p1.next);
    let names: Vec<_> = p1.entries.iter().map(|e| (e.title.as_str(), e.active_count("x").unwrap())).collect();
    assert_eq!(names, [("orders-eu", 10), ("orders-us", 4), ("audit", 1000)]);
    let p2 = parse_atom(&fixture("queues-page2.xml")).unwrap();
    assert!(!p2.next);
    assert_eq!(p2.entries.len(), 3);
    let empty = parse_atom(&fixture("empty-feed.xml")).unwrap();
    assert!(empty.entries.is_empty() && !empty.next);
    let throttled = parse_atom(&fixture("queue-no-countdetails.xml")).unwrap();
    let e = throttled.entries[0].active_count("queue \"orders\"").unwrap_err();
    assert!(e.is_throttling(), "{e}");
    assert!(e.to_string().contains("no CountDetails"), "{e}");
    // An error body is not an ATOM document.
    assert!(parse_atom(&fixture("error-404.xml")).is_err());
    assert!(parse_atom("not xml <").is_err());
    assert!(parse_atom("").is_err());
    // Error answers: the numeric code, type and size; never the <Detail> text.
    let e401 = fixture("error-401.xml");
    let d = error_detail(Some("application/xml; charset=utf-8"), &e401);
    assert_eq!(d, format!("error code 401 (application/xml, {} bytes)", e401.len()));
    let d = error_detail(None, &fixture("error-404.xml"));
    assert!(d.starts_with("error code 404 (unknown type, ") && !d.contains("could not be found"), "{d}");
    assert_eq!(error_detail(Some("text/html"), "<Code>LEAKED</Code>"), "text/html, 19 bytes");
    assert_eq!(error_detail(Some("text/plain"), ""), "empty body");
}

#[test]
fn atom_edge_cases() {
    // Entities in titles, a self-closing CountDetails, an unparsable count.
    let doc = parse_atom(
        r#"<feed xmlns="http://www.w3.org/2005/Atom"><entry><title>a&amp;b&#x41;</title><content><QueueDescription><CountDetails/></QueueDescription></content></entry><entry><title>c</title><content><X><CountDetails><p:ActiveMessageCount>-1</p:ActiveMessageCount></CountDetails></X></content></entry></feed>"#,
    )
    .unwrap();
    assert_eq!(doc.entries[0].title, "a&bA");
    assert_eq!(doc.entries[0].active_count("a").unwrap_err().kind(), "malformed");
    assert_eq!(doc.entries[1].active_count("c").unwrap_err().kind(), "malformed");
}

#[test]
fn evaluate_is_strictly_greater() {
    let s = config(&[("queueName", "q"), ("connection", CONN), ("activationMessageCount", "3")]).unwrap();
    assert_eq!(s.evaluate(&Measurement::Value(3.0)), Evaluation { metric: 3.0, active: false });
    assert_eq!(s.evaluate(&Measurement::Value(4.0)), Evaluation { metric: 4.0, active: true });
}

/// Identity mode: a Bearer token for the Service Bus scope, reused across polls.
#[tokio::test]
async fn identity_sends_a_cached_bearer_token() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let log = log.clone();
        async move {
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            log.lock().unwrap().push(auth);
            fixture("subscription.xml")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });

    let mut s = config(&[("topicName", "events"), ("subscriptionName", "billing"), ("namespace", "ns")]).unwrap();
    // Point the namespace at the local server (loopback ⇒ http).
    s.auth = Auth::Identity { host: addr.to_string(), host_key: "namespace" };
    let cred = FakeCredential::new(Ok("entra-token-1"), Duration::from_secs(3600));
    let poller = s.build_poller(&ctx(), Some(cred.clone())).unwrap();
    for _ in 0..2 {
        assert_eq!(poller.poll().await.unwrap(), Measurement::Value(7.0));
    }
    assert_eq!(*seen.lock().unwrap(), ["Bearer entra-token-1", "Bearer entra-token-1"]);
    assert_eq!(cred.calls.load(std::sync::atomic::Ordering::SeqCst), 1, "token reused");
    assert_eq!(*cred.scopes.lock().unwrap(), [ENTRA_SCOPE]);
}

/// Serves `body` with `status` and `content_type` on every path of a local namespace.
async fn serve_answer(status: u16, content_type: &'static str, body: &'static str) -> String {
    let app = axum::Router::new().fallback(move || async move {
        axum::http::Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(axum::body::Body::from(body))
            .unwrap()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    format!("Endpoint=sb://{addr}/;SharedAccessKeyName=n;SharedAccessKey=k3y-s3cr3t")
}

/// The connection string (hence the host) is the caller's, so an answer may be any internal
/// page: no error quotes its bytes or values parsed out of it, only status, code, type, size.
#[tokio::test]
async fn poll_errors_never_quote_the_answer() {
    const M: &str = "LEAKED-BODY-MARKER";
    const HTML: &str = "<html><body>LEAKED-BODY-MARKER internal admin</body></html>";
    const SB_ERROR: &str = "<Error><Code>40100</Code><Detail>LEAKED-BODY-MARKER: bad token</Detail></Error>";
    const ENTRY_BAD_COUNT: &str = r#"<entry xmlns="http://www.w3.org/2005/Atom"><title>LEAKED-BODY-MARKER</title><content><QueueDescription><CountDetails><d2p1:ActiveMessageCount>LEAKED-BODY-MARKER</d2p1:ActiveMessageCount></CountDetails></QueueDescription></content></entry>"#;
    const FEED_NO_COUNTS: &str = r#"<feed xmlns="http://www.w3.org/2005/Atom"><entry><title>LEAKED-BODY-MARKER</title><content><QueueDescription/></content></entry></feed>"#;
    const FEED_BAD_COUNT: &str = r#"<feed xmlns="http://www.w3.org/2005/Atom"><entry><title>LEAKED-BODY-MARKER</title><content><QueueDescription><CountDetails><ActiveMessageCount>-LEAKED-BODY-MARKER</ActiveMessageCount></CountDetails></QueueDescription></content></entry></feed>"#;
    let regex: Pairs = &[("queueName", "orders-.*"), ("useRegex", "true")];
    let single: Pairs = &[("queueName", "orders")];
    /// Name, status, content type, body, metadata, kind, wanted texts.
    type Case = (&'static str, u16, &'static str, &'static str, Pairs, &'static str, &'static [&'static str]);
    let cases: &[Case] = &[
        ("500 html", 500, "text/html", HTML, single, "http", &["HTTP 500", "text/html, 59 bytes"]),
        ("401 sb error", 401, "application/xml", SB_ERROR, single, "auth", &["HTTP 401", "error code 40100"]),
        ("404 sb error", 404, "application/xml", SB_ERROR, single, "not_found", &["error code 40100"]),
        ("429 html", 429, "text/html", HTML, single, "throttled", &["HTTP 429", "text/html"]),
        ("200 html", 200, "text/html", HTML, single, "malformed", &["not an ATOM", "text/html, 59 bytes"]),
        ("200 plain text", 200, "text/plain", M, single, "malformed", &["no XML element", "text/plain, 18 bytes"]),
        (
            "200 broken XML",
            200,
            "application/xml",
            "<feed><LEAKED-BODY-MARKER></other></feed>",
            single,
            "malformed",
            &["not XML (ill-formed XML at byte", "application/xml"],
        ),
        ("200 bad count", 200, "application/atom+xml", ENTRY_BAD_COUNT, single, "malformed", &["not a count"]),
        ("listing without counts", 200, "application/atom+xml", FEED_NO_COUNTS, regex, "throttled", &["entry 1"]),
        ("listing bad count", 200, "application/atom+xml", FEED_BAD_COUNT, regex, "malformed", &["entry 1"]),
    ];
    for (name, status, ct, body, extra, kind, wants) in cases {
        let conn = serve_answer(*status, ct, body).await;
        let mut md = vec![("connection", conn.as_str())];
        md.extend_from_slice(extra);
        let e = config(&md).unwrap().build_poller(&ctx(), None).unwrap().poll().await.unwrap_err();
        let text = e.to_string();
        assert_eq!(e.kind(), *kind, "{name}: {text}");
        assert!(!text.contains(M) && !text.contains("internal admin") && !text.contains("bad token"), "{name}: {text}");
        for want in *wants {
            assert!(text.contains(want), "{name}: {text:?} lacks {want:?}");
        }
    }
}

/// A refused connection and a timeout map to their kinds.
#[tokio::test]
async fn transport_failures() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let conn = format!("Endpoint=sb://{closed}/;SharedAccessKeyName=n;SharedAccessKey=k");
    let s = config(&[("queueName", "q"), ("connection", &conn)]).unwrap();
    let e = s.build_poller(&ctx(), None).unwrap().poll().await.unwrap_err();
    assert_eq!(e.kind(), "connect", "{e}");

    // Accepts and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let conn = format!("Endpoint=sb://{addr}/;SharedAccessKeyName=n;SharedAccessKey=k");
    let mut s = config(&[("queueName", "q"), ("connection", &conn)]).unwrap();
    s.timeout = Duration::from_millis(300);
    let start = std::time::Instant::now();
    let e = s.build_poller(&ctx(), None).unwrap().poll().await.unwrap_err();
    assert_eq!(e.kind(), "timeout", "{e}");
    assert!(start.elapsed() < Duration::from_secs(2));
    hold.abort();
}
