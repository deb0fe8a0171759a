//! Engine tests with scalers the test controls, on tokio's paused clock.
//!
//! A fake source is named by the `source` metadata key and driven through [`fake`]; its
//! poller counts polls, answers the value or error the test set, after an optional delay.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebb_scalers::metadata::collect;
use ebb_scalers::{ConfigErrors, Evaluation, Measurement, Metadata, PollError, Poller, Scaler, SourceKey};
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use super::*;

#[derive(Default, Debug)]
struct FakeSource {
    answer: Mutex<Option<Result<f64, PollError>>>,
    delay: Mutex<Duration>,
    polls: AtomicU64,
}

/// One test's fake sources by name; its engine's registry parses `source` against them.
#[derive(Default)]
struct Fakes(Mutex<HashMap<String, Arc<FakeSource>>>);

impl Fakes {
    fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The fake source named `name`, created answering 0.
    fn get(&self, name: &str) -> Arc<FakeSource> {
        self.0
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_insert_with(|| {
                let f = FakeSource::default();
                *f.answer.lock().unwrap() = Some(Ok(0.0));
                Arc::new(f)
            })
            .clone()
    }
}

impl FakeSource {
    fn set(&self, r: Result<f64, PollError>) {
        *self.answer.lock().unwrap() = Some(r);
    }
    fn polls(&self) -> u64 {
        self.polls.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct FakeScaler {
    key: SourceKey,
    source: Arc<FakeSource>,
    threshold: f64,
    activation: f64,
    /// `connectionRef`: a named secret the trigger would use.
    secret: Option<String>,
}

struct FakePoller(Arc<FakeSource>);

#[async_trait::async_trait]
impl Poller for FakePoller {
    async fn poll(&self) -> Result<Measurement, PollError> {
        self.0.polls.fetch_add(1, Ordering::SeqCst);
        let delay = *self.0.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let answer = self.0.answer.lock().unwrap().clone().expect("answer set");
        answer.map(Measurement::Value)
    }
}

impl Scaler for FakeScaler {
    fn scaler_type(&self) -> &'static str {
        "fake"
    }
    fn source_key(&self) -> &SourceKey {
        &self.key
    }
    fn target(&self) -> f64 {
        self.threshold
    }
    fn poll_timeout(&self) -> Duration {
        Duration::from_secs(3)
    }
    fn evaluate(&self, m: &Measurement) -> Evaluation {
        let v = m.scalar();
        Evaluation { metric: v, active: v > self.activation }
    }
    fn poller(&self, _ctx: &Arc<ebb_scalers::ScalerContext>) -> Result<Arc<dyn Poller>, ConfigErrors> {
        Ok(Arc::new(FakePoller(self.source.clone())))
    }
    fn held(&self) -> Vec<ebb_scalers::trust::Held> {
        let named = |n: &String| ebb_scalers::trust::Held::NamedSecret { name: n.clone(), key: "connectionRef".into() };
        self.secret.iter().map(named).collect()
    }
}

fn parse_fake(fakes: &Fakes, md: &Metadata<'_>) -> Result<Arc<dyn Scaler>, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    let name = collect(&mut errs, md.required("source")).unwrap_or_default().to_string();
    let threshold = collect(&mut errs, md.f64("threshold")).flatten().unwrap_or(10.0);
    let activation = collect(&mut errs, md.f64("activationThreshold")).flatten().unwrap_or(0.0);
    let secret = md.get("connectionRef").map(str::to_string);
    errs.into_result()?;
    let source = fakes.get(&name);
    Ok(Arc::new(FakeScaler { key: SourceKey(format!("fake|{name}")), source, threshold, activation, secret }))
}

fn engine(fakes: &Arc<Fakes>) -> Engine {
    engine_with(fakes, EngineConfig::default())
}

/// An engine whose registry holds only the `fake` scaler type, over this test's `fakes`.
fn engine_with(fakes: &Arc<Fakes>, config: EngineConfig) -> Engine {
    let mut reg = Registry::default();
    let fakes = fakes.clone();
    let fake = ebb_scalers::Registration {
        scaler_type: "fake",
        parse: Arc::new(move |md: &Metadata<'_>| parse_fake(&fakes, md)),
        example: &[("source", "example")],
    };
    let scalers = ebb_scalers::Registry::empty(Default::default()).register(fake);
    Engine::new(config, Arc::new(Metrics::new(&mut reg)), Arc::new(scalers))
}

/// Trigger metadata for the `fake` scaler type.
fn md(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    let mut m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    m.entry("scalerType".into()).or_insert_with(|| "fake".into());
    m
}

#[tokio::test(start_paused = true)]
async fn one_poller_per_source_and_single_flight_first_poll() {
    let fakes = Fakes::new();
    let src = fakes.get("single-flight");
    src.set(Ok(42.0));
    *src.delay.lock().unwrap() = Duration::from_millis(200);
    let e = engine(&fakes);
    let meta = md(&[("source", "single-flight"), ("pollingInterval", "5")]);
    let mut tasks = Vec::new();
    for i in 0..300 {
        let e = e.clone();
        let meta = meta.clone();
        tasks.push(tokio::spawn(async move {
            let t = e.resolve("ns", &format!("so-{i}"), &meta, None).await.unwrap();
            e.decide(&t).await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().metric, 42.0);
    }
    assert_eq!(src.polls(), 1, "300 concurrent first requests share one poll");
    assert_eq!(e.source_count(), 1);
    assert_eq!(e.trigger_count(), 300);
}

#[tokio::test(start_paused = true)]
async fn distinct_sources_poll_separately_and_thresholds_stay_per_trigger() {
    let fakes = Fakes::new();
    let (a, b) = (fakes.get("distinct-a"), fakes.get("distinct-b"));
    a.set(Ok(7.0));
    b.set(Ok(70.0));
    let e = engine(&fakes);
    let low =
        e.resolve("ns", "low", &md(&[("source", "distinct-a"), ("activationThreshold", "5")]), None).await.unwrap();
    let high =
        e.resolve("ns", "high", &md(&[("source", "distinct-a"), ("activationThreshold", "50")]), None).await.unwrap();
    let other = e.resolve("ns", "other", &md(&[("source", "distinct-b")]), None).await.unwrap();
    assert!(e.decide(&low).await.unwrap().active);
    assert!(!e.decide(&high).await.unwrap().active, "same source, own activation threshold");
    assert_eq!(e.decide(&other).await.unwrap().metric, 70.0);
    assert_eq!(e.source_count(), 2);
    assert_eq!((a.polls(), b.polls()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn source_polls_at_the_smallest_interval_asked() {
    let fakes = Fakes::new();
    let src = fakes.get("interval");
    let config = EngineConfig { min_polling_interval: Duration::from_millis(100), ..Default::default() };
    let e = engine_with(&fakes, config);
    let slow = e.resolve("ns", "slow", &md(&[("source", "interval"), ("pollingInterval", "10")]), None).await.unwrap();
    e.decide(&slow).await.unwrap();
    let fast = e.resolve("ns", "fast", &md(&[("source", "interval"), ("pollingInterval", "0.5")]), None).await.unwrap();
    // The slow interval's sleep is already running; from the next poll on, 0.5 s applies.
    tokio::time::sleep(Duration::from_millis(10_050)).await;
    let at_ten = src.polls();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(src.polls() - at_ten, 10, "0.5 s interval once the fast trigger joined");
    assert_eq!(e.decide(&fast).await.unwrap().metric, 0.0);
}

#[tokio::test(start_paused = true)]
async fn slow_first_poll_answers_unavailable_within_the_bound() {
    let fakes = Fakes::new();
    let src = fakes.get("slow-first");
    *src.delay.lock().unwrap() = Duration::from_secs(2);
    let e = engine(&fakes);
    let t = e.resolve("ns", "so", &md(&[("source", "slow-first")]), None).await.unwrap();
    let started = Instant::now();
    let err = e.decide(&t).await.unwrap_err();
    assert!(matches!(err, EngineError::FirstPollPending { .. }), "{err}");
    assert_eq!(started.elapsed(), e.config().first_poll_wait);
    // The poll went on in the background; the next request finds it done.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(e.decide(&t).await.unwrap().metric, 0.0);
    // One poll, or two if the source's next grid tick already came (it may fall anywhere in
    // the 5 s interval).
    assert!((1..=2).contains(&src.polls()), "{}", src.polls());
}

#[tokio::test(start_paused = true)]
async fn last_good_value_serves_until_stale_then_unavailable_then_recovers() {
    let fakes = Fakes::new();
    let src = fakes.get("stale");
    src.set(Ok(12.0));
    let config = EngineConfig { max_staleness: Duration::from_secs(20), ..EngineConfig::default() };
    let e = engine_with(&fakes, config);
    let t = e.resolve("ns", "so", &md(&[("source", "stale"), ("pollingInterval", "1")]), None).await.unwrap();
    assert_eq!(e.decide(&t).await.unwrap().metric, 12.0);
    src.set(Err(PollError::Connect("connection refused".into())));
    tokio::time::sleep(Duration::from_secs(19)).await;
    let d = e.decide(&t).await.unwrap();
    assert_eq!(d.metric, 12.0, "last good value within the staleness bound");
    assert!(d.active, "a fault never turns a trigger inactive");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let err = e.decide(&t).await.unwrap_err();
    assert!(err.to_string().contains("connection refused"), "{err}");
    // Recovery within one interval: retries never wait longer than the 1 s interval.
    src.set(Ok(3.0));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(e.decide(&t).await.unwrap().metric, 3.0);
}

#[tokio::test(start_paused = true)]
async fn failing_source_retries_within_its_interval_and_throttling_backs_off_longer() {
    let fakes = Fakes::new();
    let failing = fakes.get("backoff");
    failing.set(Err(PollError::Http { status: 500, detail: "boom".into() }));
    let throttled = fakes.get("throttled");
    throttled.set(Err(PollError::Throttled { detail: "HTTP 429".into(), retry_after: None }));
    let e = engine_with(&fakes, EngineConfig::default());
    let a = e.resolve("ns", "a", &md(&[("source", "backoff"), ("pollingInterval", "10")]), None).await.unwrap();
    let b = e.resolve("ns", "b", &md(&[("source", "throttled"), ("pollingInterval", "1")]), None).await.unwrap();
    assert!(e.decide(&a).await.is_err());
    assert!(e.decide(&b).await.is_err());
    tokio::time::sleep(Duration::from_secs(59)).await;
    // Polls at 0, 1, 3, 7, 15, 25, 35, 45, 55 s: delays 1, 2, 4, 8, then the 10 s interval.
    assert_eq!(failing.polls(), 9);
    // Throttled: at 0 and 30 s (at least `throttle_backoff` after each throttling answer).
    assert_eq!(throttled.polls(), 2);
}

#[tokio::test(start_paused = true)]
async fn invalid_metadata_names_the_key() {
    let fakes = Fakes::new();
    let e = engine(&fakes);
    let err = e.resolve("ns", "so", &md(&[("threshold", "x")]), None).await.err().unwrap();
    let EngineError::InvalidMetadata(errs) = &err else { panic!("{err}") };
    assert_eq!(errs.keys(), vec!["source", "threshold"]);
    let err = e.resolve("ns", "so", &md(&[("source", "bad-policy"), ("outputMode", "x")]), None).await.err().unwrap();
    assert!(err.to_string().contains("outputMode"), "{err}");
    assert_eq!(e.source_count(), 0, "nothing polled for bad metadata");
}

#[tokio::test(start_paused = true)]
async fn idle_triggers_are_dropped_and_their_source_stops() {
    let fakes = Fakes::new();
    let src = fakes.get("idle");
    let e = engine_with(&fakes, EngineConfig { idle_timeout: Duration::from_secs(60), ..EngineConfig::default() });
    let t = e.resolve("ns", "so", &md(&[("source", "idle"), ("pollingInterval", "1")]), None).await.unwrap();
    e.decide(&t).await.unwrap();
    drop(t);
    e.sweep(Instant::now() + Duration::from_secs(30));
    assert_eq!(e.trigger_count(), 1, "still within the idle bound");
    tokio::time::sleep(Duration::from_secs(61)).await;
    e.sweep(Instant::now());
    assert_eq!((e.trigger_count(), e.source_count()), (0, 0));
    let polls = src.polls();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(src.polls() <= polls + 1, "source stopped polling");
}

#[tokio::test(start_paused = true)]
async fn open_streams_keep_a_trigger_alive() {
    let fakes = Fakes::new();
    let _src = fakes.get("streamed");
    let e = engine_with(&fakes, EngineConfig { idle_timeout: Duration::from_secs(60), ..EngineConfig::default() });
    let t = e.resolve("ns", "so", &md(&[("source", "streamed")]), None).await.unwrap();
    let guard = t.stream_guard();
    tokio::time::sleep(Duration::from_secs(120)).await;
    e.sweep(Instant::now());
    assert_eq!(e.trigger_count(), 1);
    drop(guard);
    tokio::time::sleep(Duration::from_secs(61)).await;
    e.sweep(Instant::now());
    assert_eq!(e.trigger_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn replicas_mode_history_is_folded_by_the_poll_task() {
    let fakes = Fakes::new();
    // The trigger is asked only once, long after the polls: its decision still reflects
    // every poll (cooldown counted from the last active one), not just the latest.
    let src = fakes.get("history");
    src.set(Ok(55.0));
    let e = engine_with(&fakes, EngineConfig::default());
    let meta =
        md(&[("source", "history"), ("pollingInterval", "1"), ("outputMode", "replicas"), ("cooldownPeriod", "10")]);
    let t = e.resolve("ns", "so", &meta, None).await.unwrap();
    assert_eq!(e.decide(&t).await.unwrap().desired_replicas, 6);
    tokio::time::sleep(Duration::from_millis(500)).await;
    src.set(Ok(0.0));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let d = e.decide(&t).await.unwrap();
    assert_eq!((d.desired_replicas, d.active), (6, true), "stabilization window holds 6");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let d = e.decide(&t).await.unwrap();
    assert_eq!((d.desired_replicas, d.active), (0, false), "10 s after the last active poll");
}

struct FakeAuthRefs;

#[async_trait::async_trait]
impl AuthRefResolver for FakeAuthRefs {
    async fn resolve(&self, namespace: &str, name: &str) -> Result<HashMap<String, String>, String> {
        match (namespace, name) {
            ("ns", "fake-auth") => Ok(md(&[("activationThreshold", "50"), ("threshold", "999")])),
            _ => Err(format!("TriggerAuthentication {namespace}/{name} not found")),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn authentication_ref_fills_missing_keys_only() {
    let fakes = Fakes::new();
    let src = fakes.get("auth-ref");
    src.set(Ok(20.0));
    let e = engine_with(&fakes, EngineConfig { access: access_policy(true), ..Default::default() })
        .with_auth_refs(Arc::new(FakeAuthRefs));
    let meta = md(&[("source", "auth-ref"), ("threshold", "10"), ("authenticationRef", "fake-auth")]);
    let t = e.resolve("ns", "so", &meta, None).await.unwrap();
    assert_eq!(t.target(), 10.0, "the metadata's own threshold wins");
    assert!(!e.decide(&t).await.unwrap().active, "activationThreshold 50 came from the TriggerAuthentication");
    // Later requests find the trigger by KEDA's metadata, without another lookup.
    assert!(Arc::ptr_eq(&t, &e.resolve("ns", "so", &meta, None).await.unwrap()));

    let missing = md(&[("source", "auth-ref"), ("authenticationRef", "nope")]);
    let err = e.resolve("ns", "so2", &missing, None).await.err().unwrap();
    assert!(err.to_string().contains("authenticationRef") && err.to_string().contains("not found"), "{err}");
}

/// An access policy binding namespace `ns` to the named secret `ns-secret` and to its own
/// TriggerAuthentications; `trust` believes the caller's namespace.
fn access_policy(trust: bool) -> crate::access::Access {
    let yaml = format!(
        "trustCallerNamespace: {trust}\nbindings: [{{namespaces: [ns], secrets: [ns-secret], authenticationRef: true}}]"
    );
    crate::access::Access { policy: serde_saphyr::from_str(&yaml).unwrap(), ..Default::default() }
}

/// Issue 13: what ebb holds is used only as the operator's policy allows, and a refusal is
/// PERMISSION_DENIED naming the policy. Nothing is polled for a refused trigger.
#[tokio::test(start_paused = true)]
async fn access_policy_gates_named_secrets_and_authentication_refs() {
    let fakes = Fakes::new();
    let src = fakes.get("guarded");
    let meta = md(&[("source", "guarded"), ("connectionRef", "ns-secret")]);
    let e = engine(&fakes); // a fresh install binds nothing
    let err = e.resolve("ns", "so", &meta, None).await.err().unwrap();
    assert!(matches!(&err, EngineError::PermissionDenied(r) if r.contains("connectionRef")), "{err}");
    assert_eq!(src.polls(), 0);

    let e = engine_with(&fakes, EngineConfig { access: access_policy(false), ..Default::default() })
        .with_auth_refs(Arc::new(FakeAuthRefs));
    e.resolve("ns", "so", &meta, None).await.unwrap();
    let err = e.resolve("other", "so", &meta, None).await.err().unwrap();
    assert!(matches!(err, EngineError::PermissionDenied(_)), "{err}");
    let other = md(&[("source", "guarded"), ("connectionRef", "other-secret")]);
    assert!(matches!(e.resolve("ns", "so2", &other, None).await, Err(EngineError::PermissionDenied(_))));
    // authenticationRef needs a namespace the operator can vouch for.
    let auth = md(&[("source", "guarded"), ("authenticationRef", "fake-auth")]);
    let err = e.resolve("ns", "so3", &auth, None).await.err().unwrap();
    assert!(matches!(&err, EngineError::PermissionDenied(r) if r.contains("trustCallerNamespace")), "{err}");
    let e = engine_with(&fakes, EngineConfig { access: access_policy(true), ..Default::default() })
        .with_auth_refs(Arc::new(FakeAuthRefs));
    e.resolve("ns", "so3", &auth, None).await.unwrap();
    assert!(matches!(e.resolve("other", "so3", &auth, None).await, Err(EngineError::PermissionDenied(_))));
}

/// Issue 13: `pollingInterval: "0.001"` polls at the floor, not 1,000 times a second.
#[tokio::test(start_paused = true)]
async fn polling_interval_has_a_floor() {
    let fakes = Fakes::new();
    let src = fakes.get("floor");
    let e = engine_with(&fakes, EngineConfig::default());
    assert_eq!(e.config().min_polling_interval, Duration::from_secs(1));
    let t = e.resolve("ns", "so", &md(&[("source", "floor"), ("pollingInterval", "0.001")]), None).await.unwrap();
    e.decide(&t).await.unwrap();
    let start = src.polls();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let polls = src.polls() - start;
    assert!((9..=11).contains(&polls), "{polls} polls in 10 s at a 1 s floor");
    assert_eq!(t.polling_interval(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn authentication_ref_without_a_resolver_names_the_key() {
    let fakes = Fakes::new();
    let e = engine(&fakes);
    let meta = md(&[("source", "auth-ref-off"), ("authenticationRef", "x")]);
    let err = e.resolve("ns", "so", &meta, None).await.err().unwrap();
    let EngineError::InvalidMetadata(errs) = &err else { panic!("{err}") };
    assert_eq!(errs.keys(), vec!["authenticationRef"]);
}

#[tokio::test(start_paused = true)]
async fn each_new_caller_is_recorded_once() {
    let fakes = Fakes::new();
    let s = fakes.get("callers");
    s.set(Ok(1.0));
    let e = engine(&fakes);
    let meta = md(&[("source", "callers")]);
    let (a, b): (std::net::SocketAddr, std::net::SocketAddr) =
        ("10.0.0.1:5000".parse().unwrap(), "10.0.0.2:5000".parse().unwrap());
    let t = e.resolve("ns", "so", &meta, Some(a)).await.unwrap();
    // The creating call's address is already known; another port of it is the same caller.
    assert!(!t.new_caller(a.ip()));
    e.resolve("ns", "so", &meta, Some("10.0.0.1:6000".parse().unwrap())).await.unwrap();
    assert!(!t.new_caller(a.ip()));
    assert!(t.new_caller(b.ip()), "a second caller is new once");
    assert!(!t.new_caller(b.ip()));
    // Capped: a flood of addresses is not a flood of log lines.
    for i in 0..100u8 {
        t.new_caller(std::net::IpAddr::from([10, 1, 0, i]));
    }
    assert!(!t.new_caller(std::net::IpAddr::from([10, 2, 0, 1])));
}

fn limited(fakes: &Arc<Fakes>, limits: super::Limits) -> Engine {
    engine_with(fakes, EngineConfig { limits, ..EngineConfig::default() })
}

#[tokio::test(start_paused = true)]
async fn metadata_over_the_limits_names_the_flag() {
    let fakes = Fakes::new();
    let e = limited(&fakes, super::Limits { metadata_entries: 3, metadata_bytes: 40, ..Default::default() });
    let many = md(&[("source", "lim"), ("a", "1"), ("b", "2"), ("c", "3")]);
    let err = e.resolve("ns", "so", &many, None).await.err().expect("limit error").to_string();
    assert!(err.contains("--max-metadata-entries 3"), "{err}");
    let big = md(&[("source", "lim"), ("blob", &"x".repeat(64))]);
    let err = e.resolve("ns", "so", &big, None).await.err().expect("limit error").to_string();
    assert!(err.contains("--max-metadata-bytes 40"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn trigger_limit_evicts_the_least_recently_used() {
    let fakes = Fakes::new();
    for name in ["lru-a", "lru-b", "lru-c"] {
        fakes.get(name).set(Ok(1.0));
    }
    let e = limited(&fakes, super::Limits { triggers: 2, ..Default::default() });
    let a = md(&[("source", "lru-a")]);
    let b = md(&[("source", "lru-b")]);
    e.resolve("ns", "a", &a, None).await.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    e.resolve("ns", "b", &b, None).await.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    e.resolve("ns", "a", &a, None).await.unwrap(); // a is now the most recent
    tokio::time::advance(Duration::from_secs(1)).await;
    e.resolve("ns", "c", &md(&[("source", "lru-c")]), None).await.unwrap();
    assert_eq!(e.trigger_count(), 2);
    assert_eq!(e.source_count(), 2, "b's source stopped with its only trigger");
    // An open stream protects a trigger: with every trigger streaming, the limit is an error.
    let ta = e.resolve("ns", "a", &a, None).await.unwrap();
    let tc = e.resolve("ns", "c", &md(&[("source", "lru-c")]), None).await.unwrap();
    let (_ga, _gc) = (ta.stream_guard(), tc.stream_guard());
    let err = e.resolve("ns", "d", &b, None).await.err().expect("limit error").to_string();
    assert!(err.contains("--max-scaledobjects 2"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn source_limit_evicts_the_least_recently_used_source_whole() {
    let fakes = Fakes::new();
    for name in ["src-a", "src-b", "src-c"] {
        fakes.get(name).set(Ok(1.0));
    }
    let e = limited(&fakes, super::Limits { sources: 2, ..Default::default() });
    let a1 = md(&[("source", "src-a")]);
    let a2 = md(&[("source", "src-a"), ("activationThreshold", "3")]);
    e.resolve("ns", "a1", &a1, None).await.unwrap(); // the oldest trigger …
    tokio::time::advance(Duration::from_secs(1)).await;
    e.resolve("ns", "b", &md(&[("source", "src-b")]), None).await.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    e.resolve("ns", "a2", &a2, None).await.unwrap(); // … but src-a was used last
    tokio::time::advance(Duration::from_secs(1)).await;
    e.resolve("ns", "c", &md(&[("source", "src-c")]), None).await.unwrap();
    assert_eq!((e.source_count(), e.trigger_count()), (2, 3), "only src-b went, with its trigger");
    // Then src-a is the least recently used source: both its triggers go at once.
    tokio::time::advance(Duration::from_secs(1)).await;
    e.resolve("ns", "b", &md(&[("source", "src-b")]), None).await.unwrap();
    assert_eq!((e.source_count(), e.trigger_count()), (2, 2), "src-a went whole");
    // A source with an open stream is never evicted: with both streaming, the limit is an error.
    let tb = e.resolve("ns", "b", &md(&[("source", "src-b")]), None).await.unwrap();
    let tc = e.resolve("ns", "c", &md(&[("source", "src-c")]), None).await.unwrap();
    let (_gb, _gc) = (tb.stream_guard(), tc.stream_guard());
    let err = e.resolve("ns", "a1", &a1, None).await.err().expect("limit error").to_string();
    assert!(err.contains("--max-sources 2"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn stream_limit_is_an_error_naming_the_flag() {
    let fakes = Fakes::new();
    let e = limited(&fakes, super::Limits { streams: 1, ..Default::default() });
    let first = e.stream_permit().unwrap();
    let err = e.stream_permit().err().unwrap().to_string();
    assert!(err.contains("--max-streams 1"), "{err}");
    drop(first);
    assert!(e.stream_permit().is_ok(), "released on drop");
}
