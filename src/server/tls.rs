//! Zero-config credentials: on first start a node creates, in its data directory, a cluster
//! CA, a node certificate signed by it, and an admin token. Later starts load them.
//!
//! Files (keys are created with mode 0600, the admin token with 0640):
//! `ca.pem` (CA certificate, given to clients), `ca.key`, `node.pem`, `node.key`,
//! `admin.token` (the admin bearer token, read by `mqctl` on the same host).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::protocol::TLS_SERVER_NAME;

pub use crate::local::{ADMIN_TOKEN, CA_CERT, CA_KEY, NODE_CERT, NODE_KEY};

/// Why credentials could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM file does not hold what it should.
    #[error("{path}: {detail}; move the file away to have a new one generated, or restore it from a backup")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

/// A new bearer token: 256 random bits as 64 hex digits. `None` if the system has no
/// randomness to give.
pub fn random_token() -> Option<String> {
    let mut raw = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw).ok()?;
    Some(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// What the QUIC server needs to present itself, and the admin token's hash.
pub struct Credentials {
    /// Node certificate chain (node, then CA).
    pub chain: Vec<CertificateDer<'static>>,
    /// Node private key.
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the admin token.
    pub admin_token_sha256: [u8; 32],
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CredentialError + '_ {
    move |source| CredentialError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file atomically (temp file + rename) with the given mode.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CredentialError> {
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let mut f = opts.open(&tmp).map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// The CA's parameters; fixed, so the issuer can be rebuilt from its key alone.
fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name
        .push(DnType::CommonName, "mqd cluster CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(p)
}

fn read_string(path: &Path) -> Result<String, CredentialError> {
    fs::read_to_string(path).map_err(io(path))
}

/// Creates what is missing in `dir`, then loads everything.
pub fn ensure(dir: &Path, extra_names: &[String]) -> Result<Credentials, CredentialError> {
    let ca_cert_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    if !ca_cert_path.exists() || !ca_key_path.exists() {
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        write_file(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&ca_cert_path, cert.pem().as_bytes(), 0o644)?;
        tracing::info!(path = %ca_cert_path.display(), "created cluster CA");
        // A new CA invalidates any old node certificate.
        let _ = fs::remove_file(dir.join(NODE_CERT));
    }
    let node_cert_path = dir.join(NODE_CERT);
    let node_key_path = dir.join(NODE_KEY);
    if !node_cert_path.exists() || !node_key_path.exists() {
        let ca_key = KeyPair::from_pem(&read_string(&ca_key_path)?).map_err(|e| {
            CredentialError::BadPem {
                path: ca_key_path.clone(),
                detail: e.to_string(),
            }
        })?;
        let issuer = Issuer::new(ca_params()?, ca_key);
        let mut names = vec![TLS_SERVER_NAME.to_string(), "localhost".to_string()];
        names.extend(extra_names.iter().cloned());
        let mut p = CertificateParams::new(names)?;
        p.distinguished_name.push(DnType::CommonName, "mqd node");
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &issuer)?;
        write_file(&node_key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&node_cert_path, cert.pem().as_bytes(), 0o644)?;
        tracing::info!(path = %node_cert_path.display(), "created node certificate");
    }
    let token_path = dir.join(ADMIN_TOKEN);
    if !token_path.exists() {
        let token = random_token()
            .ok_or_else(|| io(&token_path)(std::io::Error::other("no randomness available")))?;
        // Readable by the owner (the mqd user) and its group, so `sudo mqctl` and members of
        // the mqd group can use it; nobody else.
        write_file(&token_path, format!("{token}\n").as_bytes(), 0o640)?;
        tracing::info!(path = %token_path.display(), "created admin token");
    }

    let pem_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: rustls_pki_types::pem::Error| CredentialError::BadPem {
            path,
            detail: e.to_string(),
        }
    };
    let node = CertificateDer::from_pem_file(&node_cert_path).map_err(pem_err(&node_cert_path))?;
    let ca = CertificateDer::from_pem_file(&ca_cert_path).map_err(pem_err(&ca_cert_path))?;
    let key = PrivateKeyDer::from_pem_file(&node_key_path).map_err(pem_err(&node_key_path))?;
    let token = read_string(&token_path)?;
    let token = token.trim();
    if token.is_empty() {
        return Err(CredentialError::BadPem {
            path: token_path,
            detail: "the admin token file is empty".into(),
        });
    }
    Ok(Credentials {
        chain: vec![node, ca],
        key,
        admin_token_sha256: sha256(token.as_bytes()),
    })
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_loads() {
        let dir = tempfile::tempdir().unwrap();
        let a = ensure(dir.path(), &[]).unwrap();
        let token1 = fs::read_to_string(dir.path().join(ADMIN_TOKEN)).unwrap();
        let b = ensure(dir.path(), &[]).unwrap();
        assert_eq!(a.admin_token_sha256, b.admin_token_sha256);
        assert_eq!(
            token1,
            fs::read_to_string(dir.path().join(ADMIN_TOKEN)).unwrap()
        );
        assert_eq!(a.chain, b.chain);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(ADMIN_TOKEN))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o640);
            let key = fs::metadata(dir.path().join(CA_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(key & 0o777, 0o600);
        }
    }

    #[test]
    fn node_cert_is_reissued_from_existing_ca() {
        let dir = tempfile::tempdir().unwrap();
        let a = ensure(dir.path(), &[]).unwrap();
        fs::remove_file(dir.path().join(NODE_CERT)).unwrap();
        let b = ensure(dir.path(), &[]).unwrap();
        assert_eq!(a.chain[1], b.chain[1], "same CA");
        assert_ne!(a.chain[0], b.chain[0], "new node certificate");
    }
}
