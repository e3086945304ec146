//! TLS settings for `rediss://` URLs (feature `tls`, on by default): rustls with the ring
//! provider. Without settings, the system's trusted roots verify the server; a private CA and a
//! client certificate (mutual TLS) are given as PEM.

use std::sync::Arc;

use fred::rustls::{self, ClientConfig, RootCertStore};
use fred::types::config::TlsConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// How to verify the server and, optionally, who the client is.
///
/// ```no_run
/// # async fn demo() -> bus_core::Result<()> {
/// let tls = bus_core::TlsOptions::new()
///     .ca_pem(std::fs::read("ca.pem").expect("CA"))
///     .client_cert_pem(
///         std::fs::read("client.pem").expect("cert"),
///         std::fs::read("client.key").expect("key"),
///     );
/// let bus = bus_core::Bus::builder()
///     .tls(tls)
///     .connect("rediss://app:secret@redis.internal:6380")
///     .await?;
/// # let _ = bus; Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct TlsOptions {
    ca_pem: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("TlsOptions")
            .field("custom_ca", &self.ca_pem.is_some())
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

impl TlsOptions {
    /// The system's trusted roots, no client certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts only the CA certificate(s) in this PEM (instead of the system's roots).
    #[must_use]
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Presents this certificate chain and private key (PEM) to the server: mutual TLS.
    #[must_use]
    pub fn client_cert_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.client = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The client's TLS configuration.
    pub(crate) fn config(&self) -> Result<TlsConfig> {
        let bad =
            |what: &str, e: &dyn std::fmt::Display| Error::Config(format!("TLS: {what}: {e}"));
        let mut roots = RootCertStore::empty();
        match &self.ca_pem {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| bad("bad CA certificate PEM", &e))?;
                    roots
                        .add(cert)
                        .map_err(|e| bad("unusable CA certificate", &e))?;
                }
                if roots.is_empty() {
                    return Err(Error::Config("TLS: no certificate in the CA PEM".into()));
                }
            }
            None => {
                let found = fred::rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("protocol versions", &e))?
            .with_root_certificates(roots);
        let config = match &self.client {
            Some((cert_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(cert_pem)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| bad("bad client certificate PEM", &e))?;
                let key = PrivateKeyDer::from_pem_slice(key_pem)
                    .map_err(|e| bad("bad client key PEM", &e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad("client certificate", &e))?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(config.into())
    }
}
