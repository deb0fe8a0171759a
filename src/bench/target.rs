//! The scaler under test: ebb started as a child process, or any address; gRPC channels to it.

use super::*;

/// `ebb serve` as a child process; killed on drop.
pub(super) struct ChildScaler(pub(super) Child);

impl Drop for ChildScaler {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) fn free_port() -> Result<u16, BenchError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(BenchError::Spawn)?;
    l.local_addr().map(|a| a.port()).map_err(BenchError::Spawn)
}

pub(super) fn spawn_ebb() -> Result<(ChildScaler, String), BenchError> {
    let exe = std::env::current_exe().map_err(BenchError::Spawn)?;
    let (grpc, http) = (free_port()?, free_port()?);
    let child = Command::new(exe)
        .args(["serve", "--grpc-addr", &format!("127.0.0.1:{grpc}"), "--http-addr", &format!("127.0.0.1:{http}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(BenchError::Spawn)?;
    Ok((ChildScaler(child), format!("127.0.0.1:{grpc}")))
}

/// Resident memory (MiB) and CPU seconds (user + system) of a process, from `/proc`.
pub fn proc_usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0);
    // Fields after the `(comm)`: utime and stime are the 12th and 13th, in clock ticks (USER_HZ,
    // 100 on Linux).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let cpu = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect::<Vec<_>>())
        .and_then(|f| Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?))
        .map_or(f64::NAN, |ticks| ticks / 100.0);
    (rss, cpu)
}

pub(super) async fn connect(args: &BenchArgs, target: &str) -> Result<Vec<Channel>, BenchError> {
    let scheme = if args.tls { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://{target}"))
        .map_err(|e| BenchError::Flag(format!("--target {target}: {e}")))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(3));
    if args.tls {
        let mut tls = ClientTlsConfig::new().domain_name(args.tls_domain.clone());
        if let Some(ca) = &args.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| BenchError::Flag(format!("TLS: {e}")))?;
    }
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        let mut last = String::new();
        let mut channel = None;
        // The child scaler may still be starting: retry for up to 5 s.
        for _ in 0..50 {
            match endpoint.connect().await {
                Ok(c) => {
                    channel = Some(c);
                    break;
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        channels.push(channel.ok_or_else(|| BenchError::Connect(target.to_string(), last.clone()))?);
    }
    Ok(channels)
}

pub(super) fn read(p: &PathBuf) -> Result<Vec<u8>, BenchError> {
    std::fs::read(p).map_err(|e| BenchError::Read(p.clone(), e))
}
