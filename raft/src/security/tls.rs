//! rustls configurations (ring provider, TLS 1.2 and 1.3, ALPN `h2`) built from PEM files,
//! and kept reloading ([`super::reload`]).
//!
//! A server verifies any client certificate against its CA but does not demand one: clients
//! may authenticate by token instead, and the raft service demands a node certificate per
//! request ([`super::auth`]). A client verifies the server's certificate against its CA and
//! the name it dialled (a DNS name or an IP address, which `keel certs` puts in every node
//! certificate's subject alternative names).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};
use serde::Deserialize;

use super::error::{Result, SecurityError};
use super::pem;
use super::reload::Reloading;

/// A node's TLS files (TOML section `[tls]`): its certificate chain, its private key, and
/// the CA that issued every node's and client's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The node's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// The node's private key (PEM).
    pub key: PathBuf,
    /// The cluster's CA certificate(s) (PEM).
    pub ca: PathBuf,
}

impl TlsFiles {
    /// These files, relative paths taken from `base`.
    #[must_use]
    pub fn relative_to(&self, base: &Path) -> Self {
        Self {
            cert: base.join(&self.cert),
            key: base.join(&self.key),
            ca: base.join(&self.ca),
        }
    }

    fn all(&self) -> Vec<PathBuf> {
        vec![self.cert.clone(), self.key.clone(), self.ca.clone()]
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn refused(error: impl std::fmt::Display) -> SecurityError {
    SecurityError::Tls(error.to_string())
}

const ALPN_H2: &[u8] = b"h2";

/// A server configuration from `files`.
///
/// # Errors
/// A file that cannot be used, or a key that does not match the certificate.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(pem::roots(&files.ca)?),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(refused)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(refused)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            pem::certificates("certificate", &files.cert)?,
            pem::private_key(&files.key)?,
        )
        .map_err(refused)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// A client configuration trusting `ca`, presenting `identity` (certificate, key) if given.
///
/// # Errors
/// A file that cannot be used, or a key that does not match the certificate.
pub fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(refused)?
        .with_root_certificates(pem::roots(ca)?);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                pem::certificates("certificate", cert)?,
                pem::private_key(key)?,
            )
            .map_err(refused)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// A node's server configuration, reloaded when its files change.
pub type ServerTls = Reloading<ServerConfig>;
/// A client's configuration, reloaded when its files change.
pub type ClientTls = Reloading<ClientConfig>;

/// The node's server TLS from `files`.
///
/// # Errors
/// As [`server_config`].
pub fn server_tls(files: &TlsFiles) -> Result<ServerTls> {
    let owned = files.clone();
    Reloading::new("server TLS", files.all(), move || server_config(&owned))
}

/// The node's TLS as a client of its peers: the same certificate, presented to them.
///
/// # Errors
/// As [`client_config`].
pub fn peer_tls(files: &TlsFiles) -> Result<ClientTls> {
    let owned = files.clone();
    Reloading::new("peer TLS", files.all(), move || {
        client_config(&owned.ca, Some((&owned.cert, &owned.key)))
    })
}

/// A client's TLS: trusting `ca`, presenting `identity` if given.
///
/// # Errors
/// As [`client_config`].
pub fn client_tls(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls> {
    let ca = ca.to_owned();
    let identity = identity.map(|(c, k)| (c.to_owned(), k.to_owned()));
    let mut files = vec![ca.clone()];
    if let Some((cert, key)) = &identity {
        files.extend([cert.clone(), key.clone()]);
    }
    Reloading::new("client TLS", files, move || {
        client_config(
            &ca,
            identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        )
    })
}
