//! TLS on the gRPC door: rustls (aws-lc-rs), optional client-certificate verification (mTLS),
//! and hot reload of rotated certificate files without a restart.
//!
//! The files are watched by polling their modification time and size every `reload_every`:
//! Kubernetes updates a mounted Secret by swapping a symlink, cert-manager rotates in place, and
//! polling sees both without inotify. A rotation builds a whole new `ServerConfig` (certificate,
//! key and client CA together), used by every connection accepted after it; open connections
//! keep the config they were accepted with. A file that does not load (half written, wrong key)
//! is logged and the previous config stays in use.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};

/// A TLS handshake that takes longer than this is dropped, so a silent client holds no task.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the PEM files are (`serve --tls-cert --tls-key [--tls-client-ca]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With a client CA, clients must present a certificate it signed (mTLS).
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for rotation.
    pub reload_every: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}: {what}")]
    Pem { path: String, what: &'static str },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn pem_error(path: &Path, what: &'static str) -> TlsError {
    TlsError::Pem { path: path.display().to_string(), what }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.display().to_string(), source })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| pem_error(path, "is not valid PEM"))?;
    if certs.is_empty() {
        return Err(pem_error(path, "holds no certificate"));
    }
    Ok(certs)
}

/// Builds the server config from the files: h2 only (gRPC), TLS 1.2 and 1.3.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certs(&files.cert)?;
    // The key is never echoed: errors name the file only.
    let key =
        PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|_| pem_error(&files.key, "holds no private key"))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| TlsError::Config(format!("{}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(chain, key).map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Modification time and size of each file; `None` for a file that cannot be read now.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &TlsFiles) -> Stamp {
    [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
        .collect()
}

/// The current server config, reloaded when the files change.
pub struct Reloading {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    seen: Mutex<Stamp>,
}

impl Reloading {
    /// Loads the files; an error here stops start-up.
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let seen = stamp(&files);
        let current = load(&files)?;
        Ok(Self { files, current: RwLock::new(current), seen: Mutex::new(seen) })
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reloads when a file changed; `true` when a new config is in use.
    pub fn check(&self) -> bool {
        let now = stamp(&self.files);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return false;
            }
            // Remember this state even if it fails to load: the next change retries.
            *seen = now;
        }
        match load(&self.files) {
            Ok(cfg) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = cfg;
                info!(cert = %self.files.cert.display(), "reloaded the TLS certificate");
                true
            }
            Err(e) => {
                warn!(error = %e, "TLS files changed but do not load; keeping the previous certificate");
                false
            }
        }
    }
}

/// Accepts TCP connections, completes their TLS handshakes off the accept loop, and yields the
/// TLS streams for tonic. Checks the files for rotation every `reload_every`. Ends when the
/// consumer (the gRPC server) drops the stream.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<Reloading>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(tls.files.reload_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                _ = tick.tick() => { tls.check(); }
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: pause instead of spinning.
                            warn!(error = %e, "accepting a gRPC connection failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let acceptor = TlsAcceptor::from(tls.config());
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => {
                                let _ = tx.send(Ok(s)).await;
                            }
                            // A client without a valid certificate ends here, before any RPC.
                            Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => debug!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
