//! Certificates for a local or test cluster (what `keel certs` writes): a CA, one
//! certificate per node and one per client, each naming its role in the subject's
//! organizational unit ([`super::auth::certificate_caller`]).
//!
//! Keys are ECDSA P-256. Node certificates serve and dial (both extended key usages) and
//! name `localhost`, `127.0.0.1`, `::1` and the hosts given; client certificates dial only.
//! Private keys are written readable by their owner alone. For production, issue the same
//! shape of certificate from your own CA.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::error::{Result, SecurityError};
use super::roles::Role;

/// The names every node certificate carries besides the hosts given.
const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// How long issued certificates are valid, in days.
const VALID_DAYS: i64 = 825;

fn rcgen_error(what: &str) -> impl Fn(rcgen::Error) -> SecurityError + '_ {
    move |e| SecurityError::Config(format!("{what}: {e}"))
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

/// A CA that issues Keel certificates.
pub struct LocalCa {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa").finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams) {
    // The wall clock as Keel reads it everywhere (a test's skipped time included).
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_millis(crate::clock::now_ms());
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after =
        (now + std::time::Duration::from_secs(86_400 * VALID_DAYS.unsigned_abs())).into();
}

impl LocalCa {
    /// A new CA named `name`.
    ///
    /// # Errors
    /// Key generation or signing failed.
    pub fn create(name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::new()).map_err(rcgen_error("CA"))?;
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, format!("{name} CA"));
        params.distinguished_name = subject;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params);
        let key = KeyPair::generate().map_err(rcgen_error("CA key"))?;
        let cert = params.self_signed(&key).map_err(rcgen_error("CA"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA of `cert` (PEM) and `key` (PEM), to issue more certificates from.
    ///
    /// # Errors
    /// A file cannot be read or parsed.
    pub fn load(cert: &Path, key: &Path) -> Result<Self> {
        let read = |what, path: &Path| {
            std::fs::read_to_string(path).map_err(|source| SecurityError::Read {
                what,
                path: path.to_owned(),
                source,
            })
        };
        let cert_pem = read("CA", cert)?;
        let key_pem = read("CA key", key)?;
        let invalid = |what, path: &Path, e: rcgen::Error| SecurityError::Invalid {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let signing = KeyPair::from_pem(&key_pem).map_err(|e| invalid("CA key", key, e))?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, signing).map_err(|e| invalid("CA", cert, e))?;
        Ok(Self {
            cert_pem,
            key_pem,
            issuer,
        })
    }

    /// The CA's certificate (PEM): what nodes and clients trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for `name` with `role`: a node's (`Role::Node`) names
    /// `localhost`, `127.0.0.1`, `::1` and `hosts` and may serve; any other is a client's.
    ///
    /// # Errors
    /// A host that is neither an IP address nor a DNS name, or a signing failure.
    pub fn issue(&self, name: &str, role: Role, hosts: &[String]) -> Result<Issued> {
        let node = role == Role::Node;
        let names: Vec<String> = if node {
            LOCAL_NAMES
                .iter()
                .map(|&n| n.to_owned())
                .chain(hosts.iter().cloned())
                .collect()
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(names).map_err(rcgen_error(name))?;
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, name);
        subject.push(DnType::OrganizationalUnitName, role.name());
        params.distinguished_name = subject;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if node {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        validity(&mut params);
        let key = KeyPair::generate().map_err(rcgen_error(name))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_error(name))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the CA's certificate and key to `dir/ca.pem` and `dir/ca.key`.
    ///
    /// # Errors
    /// A file error.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        write_pair(
            dir,
            "ca",
            &Issued {
                cert_pem: self.cert_pem.clone(),
                key_pem: self.key_pem.clone(),
            },
        )
    }
}

/// Writes `text` to `path` (created or replaced) with permissions `mode`, and syncs it.
fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    })();
    written.map_err(|source| SecurityError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Writes `issued` to `dir/<stem>.pem` and `dir/<stem>.key` (the key readable by its
/// owner only); returns both paths.
///
/// # Errors
/// A file error.
pub fn write_pair(dir: &Path, stem: &str, issued: &Issued) -> Result<(PathBuf, PathBuf)> {
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    write_file(&cert, &issued.cert_pem, 0o644)?;
    write_file(&key, &issued.key_pem, 0o600)?;
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::auth::certificate_caller;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use std::os::unix::fs::PermissionsExt;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem")
    }

    /// Verifies `leaf` against the CA `roots` as a server certificate for `name` (a node
    /// dialled by that name) or, without a name, as a client certificate.
    fn verify(
        roots: &rustls::RootCertStore,
        leaf: &CertificateDer<'_>,
        name: Option<&str>,
    ) -> Result<(), String> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let roots = std::sync::Arc::new(roots.clone());
        let now = rustls_pki_types::UnixTime::now();
        if let Some(name) = name {
            let verifier =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| e.to_string())?;
            let name = rustls_pki_types::ServerName::try_from(name.to_owned())
                .map_err(|e| e.to_string())?;
            rustls::client::danger::ServerCertVerifier::verify_server_cert(
                &*verifier,
                leaf,
                &[],
                &name,
                &[],
                now,
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        } else {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| e.to_string())?;
            verifier
                .verify_client_cert(leaf, &[], now)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }

    #[test]
    fn issued_certificates_name_their_role_and_chain_to_their_ca_only() {
        let ca = LocalCa::create("test").expect("ca");
        let node = ca
            .issue("node-1", Role::Node, &["10.0.0.1".into(), "keel-1".into()])
            .expect("node");
        let client = ca.issue("ci", Role::Write, &[]).expect("client");
        let caller = certificate_caller(&der(&node.cert_pem)).expect("node caller");
        assert_eq!((caller.name.as_str(), caller.role), ("node-1", Role::Node));
        let caller = certificate_caller(&der(&client.cert_pem)).expect("client caller");
        assert_eq!((caller.name.as_str(), caller.role), ("ci", Role::Write));

        // The CA written and loaded back issues certificates its certificate verifies.
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = ca.write(dir.path()).expect("write");
        let again = LocalCa::load(&cert, &key).expect("load");
        let later = again.issue("node-2", Role::Node, &[]).expect("node 2");
        let roots = crate::security::pem::roots(&cert).expect("roots");
        for name in ["10.0.0.1", "keel-1", "localhost", "127.0.0.1", "::1"] {
            verify(&roots, &der(&node.cert_pem), Some(name)).expect(name);
        }
        verify(&roots, &der(&later.cert_pem), Some("localhost")).expect("later node");
        verify(&roots, &der(&client.cert_pem), None).expect("client");
        let wrong_name = verify(&roots, &der(&later.cert_pem), Some("10.0.0.1"));
        assert!(wrong_name.is_err(), "node-2 does not name 10.0.0.1");
        assert!(
            verify(&roots, &der(&client.cert_pem), Some("localhost")).is_err(),
            "a client certificate does not serve"
        );

        // Another CA's certificates are refused.
        let foreign = LocalCa::create("other").expect("other ca");
        let stranger = foreign.issue("node-1", Role::Node, &[]).expect("stranger");
        let refused =
            verify(&roots, &der(&stranger.cert_pem), Some("localhost")).expect_err("foreign CA");
        assert!(refused.contains("UnknownIssuer"), "{refused}");

        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
