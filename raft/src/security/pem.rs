//! PEM files: certificate chains, private keys and CA bundles, with errors naming the file.

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::error::{Result, SecurityError};

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| SecurityError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn invalid(what: &'static str, path: &Path, reason: impl Into<String>) -> SecurityError {
    SecurityError::Invalid {
        what,
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The certificates of a PEM file, in order (a chain: the leaf first); at least one.
///
/// # Errors
/// The file cannot be read, or holds no certificate or a malformed one.
pub fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(what, path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(what, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
/// The file cannot be read or holds no private key.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    const WHAT: &str = "private key";
    let pem = read(WHAT, path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| invalid(WHAT, path, format!("holds no PEM private key: {e}")))
}

/// The trust anchors of a PEM CA bundle.
///
/// # Errors
/// The file cannot be read, holds no certificate, or one that cannot be a trust anchor.
pub fn roots(path: &Path) -> Result<RootCertStore> {
    const WHAT: &str = "CA";
    let mut roots = RootCertStore::empty();
    for cert in certificates(WHAT, path)? {
        roots
            .add(cert)
            .map_err(|e| invalid(WHAT, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}
