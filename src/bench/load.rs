//! The load: KEDA's call pattern per ScaledObject, streams, and closed loops; what each call took.

use super::source::Source;
use super::*;

/// Latencies and errors of one load task, merged at the end.
#[derive(Default)]
pub(super) struct Record {
    pub(super) latencies: HashMap<&'static str, Vec<Duration>>,
    pub(super) errors: BTreeMap<(&'static str, String), u64>,
}

impl Record {
    fn add<T>(&mut self, rpc: &'static str, started: Instant, r: &Result<T, tonic::Status>) {
        self.latencies.entry(rpc).or_default().push(started.elapsed());
        if let Err(s) = r {
            *self.errors.entry((rpc, format!("{:?}", s.code()))).or_default() += 1;
        }
    }

    pub(super) fn merge(&mut self, other: Record) {
        for (k, v) in other.latencies {
            self.latencies.entry(k).or_default().extend(v);
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

pub(super) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A client call that a slow scaler cannot hang: KEDA's 3 s deadline.
pub(super) fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(RPC_DEADLINE);
    r
}

/// What the ScaledObjects are: their metadata and, with the simulated source, its state.
pub(super) struct Plan {
    pub(super) metadata: Vec<HashMap<String, String>>,
    pub(super) source: Option<Arc<Source>>,
}

pub(super) fn plan(args: &BenchArgs, source: Option<(&Arc<Source>, SocketAddr)>) -> Result<Plan, BenchError> {
    let n = if args.closed_loop { 1 } else { args.scaledobjects.max(1) };
    let mut metadata = Vec::with_capacity(n);
    for i in 0..n {
        let mut md = HashMap::new();
        match source {
            Some((_, addr)) => {
                md.insert("scalerType".into(), "prometheus".into());
                md.insert("serverAddress".into(), format!("http://{addr}"));
                md.insert("query".into(), format!("sum(bench_backlog{{source=\"{}\"}})", i % args.sources.max(1)));
                md.insert("threshold".into(), "10".into());
                md.insert("pollingInterval".into(), format!("{}", args.polling_interval));
            }
            None => {
                for kv in &args.metadata {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| BenchError::Flag(format!("--metadata {kv:?}: expected key=value")))?;
                    md.insert(k.trim().to_string(), v.to_string());
                }
            }
        }
        metadata.push(md);
    }
    Ok(Plan { metadata, source: source.map(|(s, _)| s.clone()) })
}

pub(super) fn so_ref(i: usize, md: &HashMap<String, String>) -> ScaledObjectRef {
    ScaledObjectRef { name: format!("bench-{i}"), namespace: "bench".into(), scaler_metadata: md.clone() }
}

/// One emulated ScaledObject: KEDA's poll loop plus the HPA path while active.
pub(super) async fn keda_object(
    mut client: ExternalScalerClient<Channel>,
    so: ScaledObjectRef,
    args: Arc<BenchArgs>,
    deadline: Instant,
    offset: Duration,
    rpcs: Arc<AtomicU64>,
) -> Record {
    let mut rec = Record::default();
    let poll = Duration::from_secs_f64(args.polling_interval.max(0.05));
    let hpa = Duration::from_secs_f64(args.hpa_interval.max(0.05));
    let mut next_poll = Instant::now() + offset;
    let mut next_hpa = next_poll + hpa;
    let mut active = false;
    loop {
        let (wake, is_poll) = if active && next_hpa < next_poll { (next_hpa, false) } else { (next_poll, true) };
        if wake >= deadline {
            break;
        }
        tokio::time::sleep_until(wake.into()).await;
        let t = Instant::now();
        let spec = client.get_metric_spec(request(so.clone())).await;
        rec.add("GetMetricSpec", t, &spec);
        let name = spec
            .ok()
            .and_then(|s| s.into_inner().metric_specs.first().map(|m| m.metric_name.clone()))
            .unwrap_or_default();
        let t = Instant::now();
        let m = client
            .get_metrics(request(GetMetricsRequest { scaled_object_ref: Some(so.clone()), metric_name: name }))
            .await;
        rec.add("GetMetrics", t, &m);
        let mut calls = 2;
        if is_poll {
            let t = Instant::now();
            let a = client.is_active(request(so.clone())).await;
            rec.add("IsActive", t, &a);
            if let Ok(a) = a {
                active = a.into_inner().result;
            }
            calls += 1;
            next_poll += poll;
        } else {
            next_hpa += hpa;
        }
        if !active {
            next_hpa = next_poll + hpa;
        }
        rpcs.fetch_add(calls, Ordering::Relaxed);
    }
    rec
}

/// A StreamIsActive subscriber: time from each rise of the source to the pushed `true`.
pub(super) async fn stream_object(
    mut client: ExternalScalerClient<Channel>,
    so: ScaledObjectRef,
    source: Option<Arc<Source>>,
    deadline: Instant,
    churn: Option<Duration>,
) -> (Record, Vec<Duration>) {
    let mut rec = Record::default();
    let mut pushes = Vec::new();
    let mut last_rise_seen = None;
    // With `--stream-churn`, the stream is dropped and reopened every period, as a proxy that
    // cuts streams (Container Apps' ingress) makes KEDA do.
    while Instant::now() < deadline {
        let until = churn.map_or(deadline, |c| (Instant::now() + c).min(deadline));
        let t = Instant::now();
        // Opening is bounded like any KEDA call; the stream itself may then run long.
        let stream =
            match tokio::time::timeout(RPC_DEADLINE, client.stream_is_active(tonic::Request::new(so.clone()))).await {
                Ok(r) => r,
                Err(_) => Err(tonic::Status::deadline_exceeded("opening StreamIsActive took over 3 s")),
            };
        rec.add("StreamIsActive", t, &stream);
        let Ok(stream) = stream else {
            tokio::time::sleep_until(until.into()).await;
            continue;
        };
        let mut stream = stream.into_inner();
        let mut was_active = false;
        while let Ok(msg) = tokio::time::timeout_at(until.into(), stream.message()).await {
            let Ok(Some(msg)) = msg else { break };
            if msg.result
                && !was_active
                && let Some(src) = &source
            {
                let now = src.start.elapsed().as_secs_f64();
                if let Some(rise) = src.trace.last_rise(now)
                    && last_rise_seen != Some(rise)
                {
                    last_rise_seen = Some(rise);
                    pushes.push(Duration::from_secs_f64(now - rise));
                }
            }
            was_active = msg.result;
        }
        if churn.is_none() {
            break;
        }
    }
    (rec, pushes)
}

/// The model of KEDA's built-in scalers: each call is one query to the source.
pub(super) async fn per_trigger_object(
    source: Arc<Source>,
    addr: SocketAddr,
    args: Arc<BenchArgs>,
    deadline: Instant,
    offset: Duration,
) {
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/api/v1/query?query=bench");
    let poll = Duration::from_secs_f64(args.polling_interval.max(0.05));
    let hpa = Duration::from_secs_f64(args.hpa_interval.max(0.05));
    let (mut next_poll, mut next_hpa) = (Instant::now() + offset, Instant::now() + offset + hpa);
    loop {
        let active = source.trace.value(source.start.elapsed().as_secs_f64()) > 0.0;
        let (wake, is_poll) = if active && next_hpa < next_poll { (next_hpa, false) } else { (next_poll, true) };
        if wake >= deadline {
            break;
        }
        tokio::time::sleep_until(wake.into()).await;
        let _ = http.get(&url).send().await;
        if is_poll {
            next_poll += poll;
        } else {
            next_hpa += hpa;
        }
        if !active {
            next_hpa = next_poll + hpa;
        }
    }
}

pub(super) async fn closed_loop(
    channels: &[Channel],
    so: ScaledObjectRef,
    args: &BenchArgs,
    deadline: Instant,
    rpcs: Arc<AtomicU64>,
) -> Record {
    let req = GetMetricsRequest { scaled_object_ref: Some(so.clone()), metric_name: String::new() };
    // Warm the cache first.
    let mut warm = ExternalScalerClient::new(channels[0].clone());
    let _ = warm.get_metric_spec(request(so)).await;
    let _ = warm.get_metrics(request(req.clone())).await;
    let mut tasks = Vec::new();
    for i in 0..args.concurrency.max(1) {
        let mut client = ExternalScalerClient::new(channels[i % channels.len()].clone());
        let (req, rpcs) = (req.clone(), rpcs.clone());
        tasks.push(tokio::spawn(async move {
            let mut rec = Record::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = client.get_metrics(request(req.clone())).await;
                rec.add("GetMetrics", t, &r);
                rpcs.fetch_add(1, Ordering::Relaxed);
            }
            rec
        }));
    }
    let mut rec = Record::default();
    for t in tasks {
        if let Ok(r) = t.await {
            rec.merge(r);
        }
    }
    rec
}
