//! Secret material: a string type whose `Debug` hides it, salted fingerprints for source keys,
//! PEM checks at parse time, and scrubbing of secrets from texts bound for ebb's log.

use std::fmt;
use std::sync::OnceLock;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::ConfigError;

/// A secret string; `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The salt of every fingerprint in this process. Random per process: a key seen in a log
/// cannot be used to test password guesses offline; keys are compared within one process only
/// (replicas share [`crate::SourceKey::public_part`], which drops fingerprints).
fn salt() -> &'static [u8; 16] {
    static SALT: OnceLock<[u8; 16]> = OnceLock::new();
    SALT.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut out = [0u8; 16];
        for chunk in out.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
        out
    })
}

/// A short, salted fingerprint of one secret for source keys: equal secrets give equal keys in
/// this process, and a key seen in a log reveals nothing.
pub fn fingerprint(secret: &str) -> String {
    let digest = Sha256::new().chain_update(salt()).chain_update(secret.as_bytes()).finalize();
    crate::fingerprint_text(&digest)
}

/// One salted fingerprint over several labelled secrets (a source with a token, a password and
/// a client key): keys differ when any of them does, without carrying them.
pub struct Fingerprint {
    hasher: Sha256,
    empty: bool,
}

impl Default for Fingerprint {
    fn default() -> Self {
        Self { hasher: Sha256::new().chain_update(salt()), empty: true }
    }
}

impl Fingerprint {
    /// Adds `value` under `label` (length-prefixed, so parts cannot run into each other).
    pub fn add(&mut self, label: &str, value: &str) {
        for part in [label, value] {
            self.hasher.update((part.len() as u64).to_le_bytes());
            self.hasher.update(part.as_bytes());
        }
        self.empty = false;
    }

    /// The fingerprint, or `None` when no secret was added.
    pub fn finish(self) -> Option<String> {
        if self.empty {
            return None;
        }
        Some(crate::fingerprint_text(&self.hasher.finalize()))
    }
}

/// `pem` (the value of metadata key `key`) must hold at least one PEM certificate.
pub fn check_certs(key: &str, pem: &str) -> Result<(), ConfigError> {
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        c.map_err(|_| ConfigError::new(key, "is not valid PEM"))?;
        n += 1;
    }
    if n == 0 {
        return Err(ConfigError::new(key, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(())
}

/// The metadata key `key` must hold a PEM private key (PKCS#8, PKCS#1 or SEC1). Never echoes
/// the value.
pub fn check_key(pem: &str) -> Result<(), ConfigError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map(drop)
        .map_err(|_| ConfigError::new("key", "holds no PEM private key"))
}

/// Removes every occurrence of a secret (and its URL-decoded form) from `text`.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s.as_str(), "***");
        let decoded: String = url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if decoded.len() >= 4 {
            out = out.replace(&decoded, "***");
        }
    }
    out
}

/// Replaces the value of every `sig=` in `s` (error texts of the HTTP stack can carry SAS URLs).
pub fn redact_sig(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.to_ascii_lowercase().find("sig=") {
        out.push_str(&rest[..i + 4]);
        out.push_str("REDACTED");
        let tail = &rest[i + 4..];
        let end = tail.find(|c: char| c == '&' || c == ')' || c == '"' || c.is_whitespace()).unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_match_for_equal_secrets_only() {
        assert_eq!(fingerprint("a"), fingerprint("a"));
        assert_ne!(fingerprint("a"), fingerprint("b"));
        assert_eq!(fingerprint("a").len(), 19);
        let fp = |pairs: &[(&str, &str)]| {
            let mut f = Fingerprint::default();
            pairs.iter().for_each(|(l, v)| f.add(l, v));
            f.finish()
        };
        assert_eq!(fp(&[]), None);
        assert_eq!(fp(&[("bearer", "t")]), fp(&[("bearer", "t")]));
        assert_ne!(fp(&[("bearer", "t")]), fp(&[("password", "t")]));
        assert_ne!(fp(&[("a", "bc")]), fp(&[("ab", "c")]), "parts are length-prefixed");
    }

    #[test]
    fn secrets_never_show() {
        assert_eq!(format!("{:?}", Secret("s3cr3t".into())), "***");
        assert_eq!(scrub("a s3cr3t and s3cr3t%2B", &["s3cr3t%2B".into(), "s3cr3t".into()]), "a *** and ***");
        assert_eq!(redact_sig("https://a/q?sv=1&sig=abc%2B&se=2 x"), "https://a/q?sv=1&sig=REDACTED&se=2 x");
        let e = check_key("-----BEGIN PRIVATE KEY-----s3cr3t").unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        assert_eq!(check_certs("ca", "nothing").unwrap_err().key, "ca");
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_sig("error sending request for url (http://h/q?sv=1&sig=ab%2Bc&se=2)"),
            "error sending request for url (http://h/q?sv=1&sig=REDACTED&se=2)"
        );
        assert_eq!(redact_sig("SIG=x y"), "SIG=REDACTED y");
    }

    #[test]
    fn scrub_removes_secrets_in_both_forms() {
        let s = scrub("bad sig ab%2Fc and ab/c and key k3y!", &["ab%2Fc".into(), "k3y!".into()]);
        assert_eq!(s, "bad sig *** and *** and key ***");
    }
}
