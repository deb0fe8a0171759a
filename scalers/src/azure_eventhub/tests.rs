//! `azure-eventhub` tests: the lag formula, KEDA's parse table, checkpoint formats, and polls
//! against a local server answering as the runtime API does.

use super::*;
use std::collections::HashMap;

const P: fn(i64, i64) -> PartitionInfo = |begin, last| PartitionInfo { begin, last };

fn parse_map(pairs: &[(&str, &str)]) -> Result<EventHubScaler, ConfigErrors> {
    let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    parse_config(&Metadata::new(&m))
}

const EH: &str =
    "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=s3cr3tkey;EntityPath=hub";
const ST: &str =
    "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5a2V5a2V5;EndpointSuffix=core.windows.net";

/// Issue 16: the counters `policy: drain` reads, over the partitions with a checkpoint;
/// their difference is the unprocessed count of those partitions.
#[test]
fn sequence_sums_are_arrivals_and_processed() {
    let infos = [P(0, 100), P(0, 50), P(0, -1), P(0, 7)];
    let ckpts = [Some(60), Some(50), Some(0), None];
    assert_eq!(sequence_sums(&infos, &ckpts), Some((150.0, 110.0)));
    assert_eq!(sequence_sums(&infos[3..], &ckpts[3..]), None, "no checkpoint, no counters");
    let s = parse_map(&[("connection", EH), ("storageConnection", ST), ("blobContainer", "c")]).unwrap();
    let c = s.counters(&Measurement::Partitions { unprocessed: 40.0, partitions: 4, sequence: Some((150.0, 110.0)) });
    assert_eq!((c.arrivals, c.processed, c.max_consumers), (Some(150.0), Some(110.0), Some(4)));
}

#[test]
fn all_partitions_checkpointed() {
    // KEDA calculateUnprocessedEvents: last - checkpoint.
    let counts = [unprocessed(P(0, 100), Some(90), 10_000), unprocessed(P(0, 50), Some(50), 10_000)];
    assert_eq!(counts, [10, 0]);
    assert_eq!(total(counts), 10);
}

#[test]
fn missing_checkpoint_counts_from_begin() {
    // KEDA GetUnprocessedEventCountWithoutCheckpoint: (begin==0 && last==0) || begin!=last ⇒ last-begin+1.
    assert_eq!(unprocessed(P(0, 0), None, 10_000), 1);
    assert_eq!(unprocessed(P(5, 9), None, 10_000), 5);
    assert_eq!(unprocessed(P(7, 7), None, 10_000), 0, "begin == last != 0 ⇒ 0");
    assert_eq!(total([unprocessed(P(0, 9), None, 10_000), unprocessed(P(0, 9), Some(4), 10_000)]), 15);
}

#[test]
fn empty_partition_is_zero() {
    // LastEnqueuedSequenceNumber == -1 ⇒ 0, with or without a checkpoint.
    assert_eq!(unprocessed(P(0, -1), None, 10_000), 0);
    assert_eq!(unprocessed(P(0, -1), Some(3), 10_000), 0);
}

#[test]
fn wrap_around() {
    // last < checkpoint ⇒ (MaxInt64 - checkpoint) + last.
    assert_eq!(unprocessed(P(0, 5), Some(i64::MAX - 10), 0), 15);
}

#[test]
fn stale_partition_info_is_zero() {
    // result > MaxInt64 - stalePartitionInfoThreshold ⇒ 0 (checkpoint ahead of stale info).
    assert_eq!(unprocessed(P(0, 100), Some(101), 10_000), 0);
    assert_eq!(unprocessed(P(0, 100), Some(101), 0), i64::MAX - 1);
}

#[test]
fn total_overflow_is_max() {
    assert_eq!(total([i64::MAX, 1]), i64::MAX);
}

#[test]
fn cap_at_partitions_times_threshold() {
    // if total/threshold > partitions ⇒ partitions*threshold (integer division).
    assert_eq!(capped(1000, 64, 4), 256);
    assert_eq!(capped(300, 64, 4), 300, "300/64 = 4, not > 4");
    assert_eq!(capped(319, 64, 4), 319);
    assert_eq!(capped(320, 64, 4), 256);
}

#[test]
fn evaluate_caps_metric_but_activates_on_uncapped_total() {
    let s = parse_map(&[
        ("connection", EH),
        ("storageConnection", ST),
        ("unprocessedEventThreshold", "10"),
        ("activationUnprocessedEventThreshold", "25"),
    ])
    .unwrap();
    let e = s.evaluate(&Measurement::Partitions { unprocessed: 30.0, partitions: 2, sequence: None });
    assert_eq!(e.metric, 20.0, "30/10 = 3 > 2 partitions ⇒ 2 × 10");
    assert!(e.active, "activation on the uncapped 30 > 25");
    let e = s.evaluate(&Measurement::Partitions { unprocessed: 25.0, partitions: 2, sequence: None });
    assert_eq!(e.metric, 25.0, "25/10 = 2, not > 2 partitions: uncapped");
    assert!(!e.active, "strictly greater");
    assert_eq!(s.evaluate(&Measurement::Value(7.0)).metric, 7.0, "foreign variant, no panic");
    assert_eq!(s.target(), 10.0);
}

#[test]
fn parse_table() {
    let s = parse_map(&[("connection", EH), ("storageConnection", ST)]).unwrap();
    assert_eq!(s.threshold, 64);
    assert_eq!(s.cfg.consumer_group, "$Default");
    assert_eq!(s.cfg.strategy, Strategy::AzureFunction, "empty blobContainer ⇒ azureFunction");
    assert_eq!(s.cfg.container, AZURE_FUNCTION_CONTAINER);
    assert_eq!(s.cfg.stale_threshold, 10_000);
    let key = s.source_key().0.clone();
    assert!(key.starts_with("azure-eventhub|ns.servicebus.windows.net|hub|$Default|https://acct.blob.core.windows.net/azure-webjobs-eventhub/azureFunction|value:"), "{key}");
    assert!(!key.contains("s3cr3tkey") && !key.contains("a2V5a2V5a2V5"), "{key}");

    let s = parse_map(&[("connection", EH), ("storageConnection", ST), ("blobContainer", "c")]).unwrap();
    assert_eq!(s.cfg.strategy, Strategy::Legacy);
    for (name, want) in [("blobMetadata", Strategy::BlobMetadata), ("goSdk", Strategy::GoSdk), ("dapr", Strategy::Dapr)]
    {
        let s = parse_map(&[
            ("connection", EH),
            ("storageConnection", ST),
            ("blobContainer", "c"),
            ("checkpointStrategy", name),
        ])
        .unwrap();
        assert_eq!(s.cfg.strategy, want);
    }

    let bad = |pairs: &[(&str, &str)], key: &str| {
        let e = parse_map(pairs).unwrap_err();
        assert!(e.keys().contains(&key), "{pairs:?}: {e}");
        assert!(!e.to_string().contains("s3cr3tkey"), "{e}");
    };
    bad(
        &[("connection", EH), ("storageConnection", ST), ("unprocessedEventThreshold", "0")],
        "unprocessedEventThreshold",
    );
    bad(&[("connection", EH), ("storageConnection", ST), ("checkpointStrategy", "blobMetadata")], "blobContainer");
    bad(&[("connection", EH), ("storageConnection", ST), ("checkpointStrategy", "nope")], "checkpointStrategy");
    bad(&[("storageConnection", ST)], "connection");
    bad(&[("connection", EH)], "storageConnection");
    bad(
        &[
            ("connection", "Endpoint=sb://ns/;SharedAccessKeyName=k;SharedAccessKey=s3cr3tkey"),
            ("storageConnection", ST),
        ],
        "eventHubName",
    );
    bad(&[("eventHubNamespace", "ns"), ("storageAccountName", "acct")], "eventHubName");
    bad(
        &[
            ("connection", EH),
            ("storageConnection", "BlobEndpoint=https://x/;SharedAccessSignature=sv=1&sig=s3cr3tkey"),
        ],
        "storageConnection",
    );

    let s = parse_map(&[
        ("eventHubNamespace", "ns"),
        ("eventHubName", "h"),
        ("storageAccountName", "acct"),
        ("consumerGroup", "cg"),
        ("cloud", "AzureChinaCloud"),
    ])
    .unwrap();
    assert_eq!(
        s.source_key().0,
        "azure-eventhub|ns.servicebus.chinacloudapi.cn|h|cg|https://acct.blob.core.chinacloudapi.cn/azure-webjobs-eventhub/azureFunction|identity,identity"
    );
}

#[test]
fn blob_names_and_payloads() {
    let n = |s: Strategy| s.blob_name("ns.servicebus.windows.net", "hub", "$Default", "3");
    assert_eq!(n(Strategy::AzureFunction), "ns.servicebus.windows.net/hub/$Default/3");
    assert_eq!(n(Strategy::BlobMetadata), "ns.servicebus.windows.net/hub/$default/checkpoint/3");
    assert_eq!(n(Strategy::GoSdk), "3");
    assert_eq!(n(Strategy::Dapr), "dapr-hub-$Default-3");
    assert_eq!(n(Strategy::Legacy), "$Default/3");
    assert_eq!(Strategy::AzureFunction.parse_payload(r#"{"SequenceNumber":12,"PartitionId":"0"}"#), Ok(12));
    assert_eq!(Strategy::Legacy.parse_payload(r#"{"sequence_number":7,"partition_id":"0"}"#), Ok(7));
    assert_eq!(Strategy::GoSdk.parse_payload(r#"{"checkpoint":{"sequenceNumber":9},"partitionId":"0"}"#), Ok(9));
    assert!(Strategy::Dapr.parse_payload("nope").is_err());
}

#[test]
fn parses_runtime_xml() {
    let hub = r#"<entry xmlns="http://www.w3.org/2005/Atom"><title>hub</title><content type="application/xml">
        <EventHubDescription xmlns="http://schemas.microsoft.com/netservices/2010/10/servicebus/connect" xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
        <PartitionCount>2</PartitionCount><PartitionIds xmlns:d3p1="http://schemas.microsoft.com/2003/10/Serialization/Arrays">
        <d3p1:string>0</d3p1:string><d3p1:string>1</d3p1:string></PartitionIds></EventHubDescription></content></entry>"#;
    assert_eq!(parse_partition_ids(hub).unwrap(), vec!["0", "1"]);
    let p = r#"<entry xmlns="http://www.w3.org/2005/Atom"><content><PartitionDescription xmlns="http://schemas.microsoft.com/netservices/2010/10/servicebus/connect">
        <BeginSequenceNumber>3</BeginSequenceNumber><EndSequenceNumber>41</EndSequenceNumber><LastEnqueuedOffset>1234</LastEnqueuedOffset>
        <LastEnqueuedTimeUtc>2024-01-01T00:00:00Z</LastEnqueuedTimeUtc></PartitionDescription></content></entry>"#;
    assert_eq!(parse_partition(p).unwrap(), P(3, 41));
    assert!(parse_partition("<entry/>").is_err());
    assert!(parse_partition("").is_err());
}

/// One answer of the local namespace: status, content type, body, extra headers.
type Answer = (u16, &'static str, &'static str, &'static [(&'static str, &'static str)]);

const HUB_OK: Answer = (
    200,
    "application/atom+xml",
    r#"<entry xmlns="http://www.w3.org/2005/Atom"><content><EventHubDescription><PartitionIds><d3p1:string>0</d3p1:string></PartitionIds></EventHubDescription></content></entry>"#,
    &[],
);
const PART_OK: Answer = (
    200,
    "application/atom+xml",
    "<entry><content><PartitionDescription><BeginSequenceNumber>0</BeginSequenceNumber><EndSequenceNumber>10</EndSequenceNumber></PartitionDescription></content></entry>",
    &[],
);
const BLOB_OK: Answer = (200, "application/json", r#"{"SequenceNumber":5}"#, &[]);

/// Serves the hub (`/hub`), its partitions (`/hub/consumergroups/…`) and the checkpoint
/// container (`/acct/…`) on loopback; returns the `connection` and `storageConnection`.
async fn serve_namespace(hub: Answer, part: Answer, blob: Answer) -> (String, String) {
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| async move {
        let path = uri.path();
        let (status, ct, body, headers) = if path.starts_with("/hub/consumergroups/") {
            part
        } else if path.starts_with("/acct/") {
            blob
        } else {
            hub
        };
        let mut resp = axum::http::Response::builder().status(status).header("content-type", ct);
        for (k, v) in headers {
            resp = resp.header(*k, *v);
        }
        resp.body(axum::body::Body::from(body)).unwrap()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (
        format!("Endpoint=sb://{addr}/;SharedAccessKeyName=n;SharedAccessKey=s3cr3tkey;EntityPath=hub"),
        format!("AccountName=acct;AccountKey=a2V5a2V5a2V5;BlobEndpoint=http://{addr}/acct"),
    )
}

/// The connection strings (hence the hosts) are the caller's, so an answer may be any
/// internal page: no error quotes its bytes, nor ids or numbers parsed out of it.
#[tokio::test]
async fn poll_errors_never_quote_the_answer() {
    const M: &str = "LEAKED-BODY-MARKER";
    const HTML: &str = "<html><body>LEAKED-BODY-MARKER internal admin</body></html>";
    const SB_ERROR: &str = "<Error><Code>40100</Code><Detail>LEAKED-BODY-MARKER: bad token</Detail></Error>";
    const STORAGE_ERROR: &str = r#"<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code><Message>LEAKED-BODY-MARKER</Message></Error>"#;
    const META: &str = "blobMetadata";
    /// Name, hub, partition and checkpoint answers, checkpointStrategy, kind, wanted texts.
    type Case = (&'static str, Answer, Answer, Answer, &'static str, &'static str, &'static [&'static str]);
    let cases: &[Case] = &[
        (
            "hub 500 html",
            (500, "text/html", HTML, &[]),
            PART_OK,
            BLOB_OK,
            "",
            "http",
            &["HTTP 500", "text/html, 59 bytes"],
        ),
        (
            "hub 401 service bus error",
            (401, "application/xml", SB_ERROR, &[]),
            PART_OK,
            BLOB_OK,
            "",
            "auth",
            &["HTTP 401", "error code 40100 (application/xml"],
        ),
        (
            "hub 200 broken XML",
            (200, "text/html", "<html><LEAKED-BODY-MARKER></html>", &[]),
            PART_OK,
            BLOB_OK,
            "",
            "malformed",
            &["not XML (ill-formed XML at byte", "text/html, 33 bytes"],
        ),
        (
            "partition id and count from the answer",
            (
                200,
                "application/xml",
                "<entry><PartitionIds><string>LEAKED-BODY-MARKER</string></PartitionIds></entry>",
                &[],
            ),
            (
                200,
                "application/xml",
                "<entry><PartitionDescription><BeginSequenceNumber>LEAKED-BODY-MARKER</BeginSequenceNumber><EndSequenceNumber>1</EndSequenceNumber></PartitionDescription></entry>",
                &[],
            ),
            BLOB_OK,
            "",
            "malformed",
            &["partition at index 0", "BeginSequenceNumber is not an integer", "application/xml"],
        ),
        (
            "partition 404 service bus error",
            HUB_OK,
            (404, "application/xml", SB_ERROR, &[]),
            BLOB_OK,
            "",
            "not_found",
            &["error code 40100"],
        ),
        (
            "checkpoint 403 storage XML error",
            HUB_OK,
            PART_OK,
            (403, "application/xml", STORAGE_ERROR, &[]),
            "",
            "auth",
            &["HTTP 403", "error code AuthenticationFailed (application/xml"],
        ),
        (
            "checkpoint 503 with x-ms-error-code",
            HUB_OK,
            PART_OK,
            (503, "text/html", HTML, &[("x-ms-error-code", "ServerBusy")]),
            "",
            "throttled",
            &["HTTP 503", "error code ServerBusy (text/html"],
        ),
        (
            "checkpoint 500 with a code that is not one",
            HUB_OK,
            PART_OK,
            (500, "text/html", HTML, &[("x-ms-error-code", "LEAKED-BODY-MARKER")]),
            "",
            "http",
            &["HTTP 500", "text/html, 59 bytes"],
        ),
        (
            "checkpoint 200 html",
            HUB_OK,
            PART_OK,
            (200, "text/html", HTML, &[]),
            "",
            "malformed",
            &["checkpoint is not JSON (syntax error at line 1", "text/html"],
        ),
        (
            "checkpoint 200 wrong-typed number",
            HUB_OK,
            PART_OK,
            (200, "application/json", r#"{"SequenceNumber":"LEAKED-BODY-MARKER"}"#, &[]),
            "",
            "malformed",
            &["sequence number is not an integer"],
        ),
        (
            "checkpoint metadata not a number",
            HUB_OK,
            PART_OK,
            (200, "application/octet-stream", "", &[("x-ms-meta-sequencenumber", "LEAKED-BODY-MARKER")]),
            META,
            "malformed",
            &["sequencenumber metadata is not an integer"],
        ),
    ];
    for (name, hub, part, blob, strategy, kind, wants) in cases {
        let (eh, st) = serve_namespace(*hub, *part, *blob).await;
        let mut md = vec![("connection", eh.as_str()), ("storageConnection", st.as_str())];
        if !strategy.is_empty() {
            md.extend([("checkpointStrategy", *strategy), ("blobContainer", "ckpt")]);
        }
        let e = crate::poll_once(&parse_map(&md).unwrap()).await.unwrap_err();
        let text = e.to_string();
        assert_eq!(e.kind(), *kind, "{name}: {text}");
        assert!(!text.contains(M) && !text.contains("internal admin") && !text.contains("bad token"), "{name}: {text}");
        for want in *wants {
            assert!(text.contains(want), "{name}: {text:?} lacks {want:?}");
        }
    }
}
