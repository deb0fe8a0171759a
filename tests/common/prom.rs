//! A real Prometheus scraping a real Pushgateway, both on loopback, one pair per test.
//!
//! Debian's `prometheus` 2.42 and `prometheus-pushgateway` 1.5 (installed by
//! `scripts/install-services.sh`). Prometheus scrapes the Pushgateway every second with
//! `honor_labels: true`, so a pushed series keeps its `job` label. Note that Prometheus 2.42
//! hands its targets to the scrape manager on a 5 s tick: the first push after start becomes
//! queryable about 5 s later, afterwards about 1.3 s later. Poll with
//! [`PromStack::wait_for_value`], never sleep.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// How long each server may take to answer `/-/ready` (2 cores, several stacks at once).
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Per HTTP request made by the harness.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Polling period of [`PromStack::wait_for_value`].
const POLL_EVERY: Duration = Duration::from_millis(100);

/// A child process killed and reaped on drop (by its handle, never by name).
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, program: &Path, args: &[String], dir: &Path) -> Result<Proc, String> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("cloning log handle: {e}"))?;
        let child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", program.display()))?;
        Ok(Proc { name, child, log })
    }

    /// `Some(status)` if the process has already exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prometheus + Pushgateway on free loopback ports, in their own temp dir.
pub struct PromStack {
    // Drop order: the processes (declared first) die before the temp dir is removed.
    prometheus: Proc,
    pushgateway: Proc,
    prometheus_port: u16,
    pushgateway_port: u16,
    http: reqwest::Client,
    dir: TempDir,
}

/// Finds an executable on `PATH` (or in the usual Debian locations).
fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn require_binary(name: &str) -> PathBuf {
    find_binary(name).unwrap_or_else(|| panic!("{name} not installed: run scripts/install-services.sh"))
}

impl PromStack {
    /// Starts both servers and waits (bounded) until both answer `/-/ready`. Retries once
    /// with fresh ports if a start fails (a port taken between pick and bind).
    ///
    /// Panics with "prometheus not installed: run scripts/install-services.sh" if a binary is
    /// missing.
    pub async fn start() -> PromStack {
        let prometheus = require_binary("prometheus");
        let pushgateway = require_binary("prometheus-pushgateway");
        let mut failures = Vec::new();
        for attempt in 1..=2 {
            match Self::try_start(&prometheus, &pushgateway).await {
                Ok(stack) => return stack,
                Err(e) => {
                    eprintln!("PromStack start attempt {attempt} failed: {e}");
                    failures.push(e);
                }
            }
        }
        panic!("PromStack did not start (twice):\n{}", failures.join("\n---\n"));
    }

    async fn try_start(prometheus: &Path, pushgateway: &Path) -> Result<PromStack, String> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| format!("building HTTP client: {e}"))?;
        let dir = tempfile::Builder::new().prefix("ebb-prom-").tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let pg_port = super::free_port();
        let mut prom_port = super::free_port();
        while prom_port == pg_port {
            prom_port = super::free_port();
        }

        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  \
               - job_name: pushgateway\n    \
                 honor_labels: true\n    \
                 static_configs: [{{targets: [\"127.0.0.1:{pg_port}\"]}}]\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).map_err(|e| format!("writing {}: {e}", config_path.display()))?;

        let mut pg = Proc::spawn(
            "pushgateway",
            pushgateway,
            &[
                format!("--web.listen-address=127.0.0.1:{pg_port}"),
                // Debian's default persists to /var/lib/prometheus: shared by every instance.
                "--persistence.file=".to_string(),
            ],
            dir.path(),
        )?;
        let mut prom = Proc::spawn(
            "prometheus",
            prometheus,
            &[
                format!("--config.file={}", config_path.display()),
                format!("--storage.tsdb.path={}", dir.path().join("data").display()),
                format!("--web.listen-address=127.0.0.1:{prom_port}"),
            ],
            dir.path(),
        )?;

        wait_ready(&http, &mut pg, pg_port).await?;
        wait_ready(&http, &mut prom, prom_port).await?;
        Ok(PromStack {
            prometheus: prom,
            pushgateway: pg,
            prometheus_port: prom_port,
            pushgateway_port: pg_port,
            http,
            dir,
        })
    }

    /// `http://127.0.0.1:<port>`: what a trigger's `serverAddress` names.
    pub fn prometheus_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.prometheus_port)
    }

    pub fn pushgateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.pushgateway_port)
    }

    /// The temp dir holding the config, the TSDB and both logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the group `job` on the Pushgateway with `body` (text exposition format):
    /// a PUT, so series not in `body` disappear from the group.
    pub async fn push(&self, job: &str, body: &str) {
        let mut body = body.to_string();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        let url = format!("{}/metrics/job/{}", self.pushgateway_url(), encode(job));
        let resp = self.http.put(&url).body(body).send().await.unwrap_or_else(|e| panic!("PUT {url}: {e}"));
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            panic!("PUT {url}: HTTP {status}: {text}");
        }
    }

    /// Deletes the group `job` from the Pushgateway (Prometheus marks its series stale at the
    /// next scrape).
    pub async fn delete(&self, job: &str) {
        let url = format!("{}/metrics/job/{}", self.pushgateway_url(), encode(job));
        let resp = self.http.delete(&url).send().await.unwrap_or_else(|e| panic!("DELETE {url}: {e}"));
        let status = resp.status();
        assert!(status.is_success(), "DELETE {url}: HTTP {status}");
    }

    /// The JSON body of `/api/v1/query?query=<promql>` (also for error answers, which
    /// Prometheus gives as JSON too). Counts in [`Self::query_requests_total`].
    pub async fn query(&self, promql: &str) -> Value {
        let url = format!("{}/api/v1/query?query={}", self.prometheus_url(), encode(promql));
        let resp = self.http.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_else(|e| panic!("GET {url}: reading body: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: HTTP {status}, not JSON ({e}): {text}"))
    }

    /// Polls `promql` every 100 ms until it yields exactly one sample equal to `expected`;
    /// returns how long that took. Panics (with the last answer) after `timeout`.
    pub async fn wait_for_value(&self, promql: &str, expected: f64, timeout: Duration) -> Duration {
        let start = Instant::now();
        let max_polls = (timeout.as_millis() / POLL_EVERY.as_millis()) as usize + 1;
        let mut last = Value::Null;
        for _ in 0..max_polls {
            last = self.query(promql).await;
            if single_value(&last).is_some_and(|v| (v - expected).abs() < 1e-9) {
                return start.elapsed();
            }
            if start.elapsed() >= timeout {
                break;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        panic!(
            "Prometheus did not report {promql} == {expected} within {timeout:?}; last answer: {last}\n\
             prometheus.log tail:\n{}",
            self.prometheus.log_tail(10)
        );
    }

    /// How many `/api/v1/query` requests Prometheus has served (any status), read from its own
    /// `/metrics` (`prometheus_http_requests_total{code=…,handler="/api/v1/query"}`, summed
    /// over codes). Reading it is not a query, but [`Self::query`] and
    /// [`Self::wait_for_value`] are: measure deltas around a phase with no harness queries in
    /// it.
    pub async fn query_requests_total(&self) -> f64 {
        let url = format!("{}/metrics", self.prometheus_url());
        let resp = self.http.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let text = resp.text().await.unwrap_or_else(|e| panic!("GET {url}: reading body: {e}"));
        requests_total(&text, "/api/v1/query")
    }
}

impl Drop for PromStack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "PromStack logs ({}):\n--- pushgateway.log\n{}\n--- prometheus.log\n{}",
                self.dir.path().display(),
                self.pushgateway.log_tail(15),
                self.prometheus.log_tail(15)
            );
        }
        // The `Proc` fields kill and reap their children as they drop, before `dir` goes.
    }
}

async fn wait_ready(http: &reqwest::Client, proc: &mut Proc, port: u16) -> Result<(), String> {
    let url = format!("http://127.0.0.1:{port}/-/ready");
    let start = Instant::now();
    let max_polls = (READY_TIMEOUT.as_millis() / 50) as usize + 1;
    for _ in 0..max_polls {
        if let Some(status) = proc.exited() {
            return Err(format!("{} exited ({status}) before ready:\n{}", proc.name, proc.log_tail(10)));
        }
        if let Ok(resp) = http.get(&url).timeout(Duration::from_secs(1)).send().await
            && resp.status().is_success()
        {
            return Ok(());
        }
        if start.elapsed() >= READY_TIMEOUT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{} not ready at {url} after {READY_TIMEOUT:?}:\n{}", proc.name, proc.log_tail(10)))
}

/// The single sample of an instant-query answer: a one-element vector or a scalar.
pub fn single_value(answer: &Value) -> Option<f64> {
    let data = answer.get("data")?;
    let pair = match data.get("resultType")?.as_str()? {
        "vector" => {
            let result = data.get("result")?.as_array()?;
            if result.len() != 1 {
                return None;
            }
            result[0].get("value")?
        }
        "scalar" => data.get("result")?,
        _ => return None,
    };
    pair.get(1)?.as_str()?.parse().ok()
}

/// Sums `prometheus_http_requests_total` over the lines whose `handler` label is exactly
/// `handler`.
fn requests_total(exposition: &str, handler: &str) -> f64 {
    let label = format!("handler=\"{handler}\"");
    exposition
        .lines()
        .filter(|l| l.starts_with("prometheus_http_requests_total{"))
        .filter(|l| l.split_once('}').is_some_and(|(labels, _)| labels.contains(&label)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.trim().parse::<f64>().ok()))
        .sum()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_the_query_handler() {
        let text = "# TYPE prometheus_http_requests_total counter\n\
            prometheus_http_requests_total{code=\"200\",handler=\"/api/v1/query\"} 7\n\
            prometheus_http_requests_total{code=\"400\",handler=\"/api/v1/query\"} 2\n\
            prometheus_http_requests_total{code=\"200\",handler=\"/api/v1/query_range\"} 5\n\
            prometheus_http_requests_total{code=\"200\",handler=\"/metrics\"} 3\n";
        assert_eq!(requests_total(text, "/api/v1/query"), 9.0);
    }

    #[test]
    fn single_value_reads_vectors_and_scalars() {
        let v: Value = serde_json::from_str(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.5,"17"]}]}}"#,
        )
        .unwrap();
        assert_eq!(single_value(&v), Some(17.0));
        let s: Value =
            serde_json::from_str(r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"20"]}}"#).unwrap();
        assert_eq!(single_value(&s), Some(20.0));
        let e: Value =
            serde_json::from_str(r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#).unwrap();
        assert_eq!(single_value(&e), None);
    }

    #[test]
    fn encodes_promql() {
        assert_eq!(encode(r#"sum(q{a="b"})"#), "sum%28q%7Ba%3D%22b%22%7D%29");
    }
}
