//! PEM files for TLS: certificates, keys and trusted authorities, read and
//! checked whole, with errors that name the setting that gave the file, so
//! that a bad file stops the proxy at start (exit 64) rather than at the
//! first handshake.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The cryptography every TLS setting of the proxy uses.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `--setting: path: why`, the one line a bad file gets.
fn bad(setting: &str, path: &Path, why: impl std::fmt::Display) -> String {
    format!("--{setting}: {}: {why}", path.display())
}

fn pem_error(e: pem::Error) -> String {
    match e {
        pem::Error::Io(e) => format!("cannot read it ({e})"),
        pem::Error::NoItemsFound => "no PEM item of the kind wanted".to_owned(),
        e => format!("not valid PEM ({e})"),
    }
}

/// The certificates in the PEM file `path` (a chain, leaf first, or a
/// bundle of authorities): at least one, and nothing that is not PEM.
///
/// # Errors
///
/// One line naming `setting` and the file.
pub(crate) fn read_certs(
    setting: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(setting, path, pem_error(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(setting, path, pem_error(e)))?;
    if certs.is_empty() {
        return Err(bad(setting, path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// The private key in the PEM file `path` (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
///
/// One line naming `setting` and the file.
pub(crate) fn read_key(setting: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => bad(setting, path, "no PRIVATE KEY in the file"),
        e => bad(setting, path, pem_error(e)),
    })
}

/// The certificate chain of `cert_setting` with the key of `key_setting`,
/// checked to belong together.
///
/// # Errors
///
/// One line naming the setting at fault.
pub(crate) fn read_identity(
    (cert_setting, cert): (&str, &Path),
    (key_setting, key): (&str, &Path),
) -> Result<Arc<CertifiedKey>, String> {
    let chain = read_certs(cert_setting, cert)?;
    let der = read_key(key_setting, key)?;
    let provider = provider();
    let signer = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| bad(key_setting, key, format!("unusable key ({e})")))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|_| {
        format!(
            "--{key_setting}: {}: not the key of the certificate in --{cert_setting}",
            key.display()
        )
    })?;
    Ok(Arc::new(certified))
}

/// The authorities to trust: those in the PEM bundle `ca` when given, or
/// else the system's (what curl and OpenSSL trust: `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` when set, or the operating system's store).
///
/// # Errors
///
/// One line naming `setting`: a bad bundle, or no system authority at all.
pub(crate) fn roots(setting: &str, ca: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    if let Some(ca) = ca {
        for cert in read_certs(setting, ca)? {
            roots
                .add(cert)
                .map_err(|e| bad(setting, ca, format!("not a usable authority ({e})")))?;
        }
        return Ok(roots);
    }
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "no trusted authority found on this system ({} errors reading its store): give --{setting}",
            found.errors.len()
        ));
    }
    Ok(roots)
}

/// Client settings for TLS 1.2 and 1.3 that trust `roots`, present
/// `identity` when given, and offer `alpn`.
pub(crate) fn client_config(
    roots: RootCertStore,
    identity: Option<Arc<CertifiedKey>>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => builder.with_client_cert_resolver(Arc::new(Presents(identity))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Presents one certificate to every server that asks for one.
#[derive(Debug)]
struct Presents(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for Presents {
    fn resolve(
        &self,
        _authorities: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
