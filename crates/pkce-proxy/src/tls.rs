//! PEM files for TLS: certificates, keys and trusted authorities, read and
//! checked whole, with errors that name the setting that gave the file, so
//! that a bad file stops the proxy at start (exit 64) rather than at the
//! first handshake.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::metrics::Metrics;

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

/// The whole of the file `path`, or the one line saying why not.
fn read_file(setting: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| bad(setting, path, format!("cannot read it ({e})")))
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
    parse_certs(setting, path, &read_file(setting, path)?)
}

/// The certificates in `pem`, read from the file `path`.
fn parse_certs(
    setting: &str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(setting, path, pem_error(e)))?;
    if certs.is_empty() {
        return Err(bad(setting, path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// The private key in `pem` (PKCS#8, PKCS#1 or SEC1), read from the file
/// `path`.
fn parse_key(setting: &str, path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
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
    let cert_pem = read_file(cert_setting, cert)?;
    let key_pem = read_file(key_setting, key)?;
    parse_identity(
        (cert_setting, cert, &cert_pem),
        (key_setting, key, &key_pem),
    )
}

/// [`read_identity`] of files already read: each setting, its file and
/// the file's bytes.
pub(crate) fn parse_identity(
    (cert_setting, cert, cert_pem): (&str, &Path, &[u8]),
    (key_setting, key, key_pem): (&str, &Path, &[u8]),
) -> Result<Arc<CertifiedKey>, String> {
    let chain = parse_certs(cert_setting, cert, cert_pem)?;
    let der = parse_key(key_setting, key, key_pem)?;
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

/// The settings that name the client listener's certificate and key.
const CERT_SETTING: &str = "tls-cert";
const KEY_SETTING: &str = "tls-key";

/// The client listener's certificate chain and key files as last read:
/// their bytes, or why they could not be read, so that a check can tell
/// whether they changed.
#[derive(Clone, PartialEq, Eq)]
struct Files {
    cert: Result<Vec<u8>, String>,
    key: Result<Vec<u8>, String>,
}

impl Files {
    fn read(cert: &Path, key: &Path) -> Self {
        Self {
            cert: read_file(CERT_SETTING, cert),
            key: read_file(KEY_SETTING, key),
        }
    }

    fn identity(&self, cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
        let cert_pem = self.cert.as_ref().map_err(String::clone)?;
        let key_pem = self.key.as_ref().map_err(String::clone)?;
        parse_identity((CERT_SETTING, cert, cert_pem), (KEY_SETTING, key, key_pem))
    }
}

/// The client listener's certificate and key as read at start.
#[derive(Clone)]
pub(crate) struct Loaded {
    files: Files,
    identity: Arc<CertifiedKey>,
}

impl Loaded {
    /// Reads `--tls-cert` and `--tls-key` and checks that they belong
    /// together.
    ///
    /// # Errors
    ///
    /// One line naming the setting at fault.
    pub(crate) fn read(cert: &Path, key: &Path) -> Result<Self, String> {
        let files = Files::read(cert, key);
        let identity = files.identity(cert, key)?;
        Ok(Self { files, identity })
    }
}

/// Hands every handshake the current certificate, which a reload swaps.
#[derive(Debug)]
pub(crate) struct Current(RwLock<Arc<CertifiedKey>>);

impl Current {
    fn get(&self) -> Arc<CertifiedKey> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, identity: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = identity;
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// What a check of the certificate files found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checked {
    /// The files are as when last checked.
    Unchanged,
    /// They changed and the new pair is served.
    Reloaded,
    /// They changed, and the new pair cannot be used: the one before is
    /// still served.
    Failed,
}

/// The client listener's certificate, read again from its files when they
/// change (see [`Reloader::check`]).
pub(crate) struct Reloader {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<Current>,
    /// The files as last checked, whether they were taken or not: a pair
    /// that failed is reported once, not at every check.
    seen: Mutex<Files>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// Serves `loaded`, read from `cert` and `key`.
    pub(crate) fn new(cert: &Path, key: &Path, loaded: Loaded, metrics: Arc<Metrics>) -> Self {
        Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: Arc::new(Current(RwLock::new(loaded.identity))),
            seen: Mutex::new(loaded.files),
            metrics,
        }
    }

    /// Server settings for TLS 1.2 and 1.3, offering HTTP/2 and HTTP/1.1,
    /// that present the current certificate.
    ///
    /// # Errors
    ///
    /// When the provider supports neither version (it supports both).
    pub(crate) fn server_config(&self) -> Result<Arc<ServerConfig>, String> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS settings: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Reads both files; when either changed since the last check, serves
    /// the new pair if it is whole and matching, or else keeps the one
    /// served and warns. Blocks on the file system: the files are small.
    pub(crate) fn check(&self) -> Checked {
        // Read under the lock: two checks at once (SIGHUP and the timer)
        // could otherwise each read a different pair and the later one to
        // lock put the older pair back.
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let files = Files::read(&self.cert, &self.key);
        if *seen == files {
            return Checked::Unchanged;
        }
        let result = files.identity(&self.cert, &self.key);
        *seen = files;
        drop(seen);
        match result {
            Ok(identity) => {
                self.current.set(identity);
                self.metrics.tls_reload(true);
                tracing::info!(
                    cert = %self.cert.display(),
                    "TLS certificate reloaded: new connections get it"
                );
                Checked::Reloaded
            }
            Err(why) => {
                self.metrics.tls_reload(false);
                tracing::warn!(
                    error = %why,
                    "TLS certificate files changed but cannot be used; the previous certificate \
                     is still served, and the files are read again at the next check"
                );
                Checked::Failed
            }
        }
    }
}
