//! Test certificates (rcgen) and a TLS front for real servers.
//!
//! - [`Ca`]: a CA that signs leaf certificates for given names.
//! - [`TlsFront`]: terminates TLS with a leaf of some CA and forwards the bytes to a plaintext
//!   server (a real Prometheus or Kafka broker), so the test decides which certificate the
//!   source presents. It counts handshakes that completed and that the client broke off (a
//!   client that refuses the certificate aborts the handshake).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate and its key (PEM), for `names`.
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A rustls acceptor serving `leaf` (PEM certificate and key).
pub fn acceptor(leaf: &(String, String)) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    let cert = rustls_pki_types::CertificateDer::from_pem_slice(leaf.0.as_bytes()).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf.1.as_bytes()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// TLS in front of a plaintext server.
pub struct TlsFront {
    pub addr: SocketAddr,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
    ok: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsFront {
    /// Listens on loopback with `leaf`; forwards once [`TlsFront::forward_to`] is set.
    pub async fn start(leaf: &(String, String)) -> TlsFront {
        let acceptor = acceptor(leaf);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (ok, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (u, o, r) = (upstream.clone(), ok.clone(), refused.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (acceptor, u, o, r) = (acceptor.clone(), u.clone(), o.clone(), r.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(sock).await else {
                        r.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    o.fetch_add(1, Ordering::SeqCst);
                    let Some(to) = *u.lock().unwrap() else { return };
                    let Ok(mut back) = tokio::net::TcpStream::connect(to).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut back).await;
                });
            }
        });
        TlsFront { addr, upstream, ok, refused, task }
    }

    pub fn forward_to(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = Some(upstream);
    }

    /// Handshakes that completed.
    pub fn handshakes(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    /// Handshakes the client broke off (it refused the certificate) or that failed otherwise.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}
