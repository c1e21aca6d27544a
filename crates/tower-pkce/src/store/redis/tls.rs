//! TLS to Redis (`rediss://`): the authorities to trust, the client
//! certificate to present, and the rustls provider the client needs.

use std::fmt;

/// What a `rediss://` store trusts and presents: PEM text, as read from the
/// files an operator gives. Without any, the system's authorities are
/// trusted and no client certificate is sent.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_pkce::store::{RedisStore, RedisTls};
///
/// let tls = RedisTls::new()
///     .root_certificates(std::fs::read("/etc/pkce/redis-ca.pem")?)
///     .client_identity(
///         std::fs::read("/etc/pkce/client.pem")?,
///         std::fs::read("/etc/pkce/client.key")?,
///     );
/// let store = RedisStore::builder("rediss://redis.internal:6380/0")
///     .tls(tls)
///     .build()?;
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "redis-store")))]
#[derive(Clone, Default)]
#[must_use]
pub struct RedisTls {
    root_certificates: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field(
                "root_certificates",
                &if self.root_certificates.is_some() {
                    "given"
                } else {
                    "the system's"
                },
            )
            .field(
                "client_key",
                &if self.client.is_some() {
                    "[redacted]"
                } else {
                    "none"
                },
            )
            .finish()
    }
}

impl RedisTls {
    /// The system's authorities, and no client certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the authorities in this PEM bundle (one or more
    /// `CERTIFICATE` items) instead of the system's.
    pub fn root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates = Some(pem.into());
        self
    }

    /// Presents this certificate chain (PEM, leaf first) and its private key
    /// (PEM: PKCS#8, PKCS#1 or SEC1) to a Redis that asks for one.
    pub fn client_identity(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.client = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    /// The PEM text for the Redis client, checked to hold what it should:
    /// the client reads no certificate from text that is not PEM, and would
    /// then trust no one, or present nothing, without a word.
    pub(super) fn certificates(self) -> Result<redis::TlsCertificates, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let has_certificates = |pem: &[u8], what: &str| match CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(certs) if !certs.is_empty() => Ok(()),
            Ok(_) => Err(format!("the {what} hold no CERTIFICATE")),
            Err(_) => Err(format!("the {what} are not valid PEM")),
        };
        if let Some(roots) = &self.root_certificates {
            has_certificates(roots, "root certificates")?;
        }
        if let Some((cert, key)) = &self.client {
            has_certificates(cert, "client certificates")?;
            // The error could quote the key: it is not repeated.
            PrivateKeyDer::from_pem_slice(key)
                .map_err(|_| "the client key holds no usable PRIVATE KEY".to_owned())?;
        }
        Ok(redis::TlsCertificates {
            client_tls: self
                .client
                .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                }),
            root_cert: self.root_certificates,
        })
    }
}

pub(super) fn is_tls(client: &redis::Client) -> bool {
    matches!(
        client.get_connection_info().addr(),
        redis::ConnectionAddr::TcpTls { .. }
    )
}

/// Makes sure the process has a default rustls provider. The Redis client
/// builds its TLS settings with the process's default, which rustls picks by
/// itself only when exactly one provider is compiled in, and panics without.
pub(super) fn with_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err means another thread installed one first: as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
