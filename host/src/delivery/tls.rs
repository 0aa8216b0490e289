//! TLS for `https://` endpoints (rustls): which servers to trust and which certificate, if any,
//! to present.
//!
//! The server is verified against `cacertfile` (PEM) or, without one, the system's roots; `certfile`
//! and `keyfile` together present a client certificate (mTLS). SNI is the URL's host name, or
//! NanoMQ's `server_name_indication` (a name to use instead, or `false`: none, and a certificate
//! for another name is accepted); NanoMQ's `verify = false` accepts any certificate. Every problem
//! with a file is found here, at start-up, and names the config key.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{ServerNameCheck, TlsFiles};

/// Why a TLS setting cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file is missing, unreadable or holds nothing usable.
    #[error("`{key}` ({path}): {message}")]
    File {
        /// The config key, e.g. `webhook.tls.cacertfile`.
        key: String,
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The settings do not fit together.
    #[error("`{key}`: {message}")]
    Invalid {
        /// The config key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The rustls client configuration for `files` (`None`: system roots, no client certificate).
pub fn client_config(files: Option<&TlsFiles>) -> Result<ClientConfig, TlsError> {
    let default = TlsFiles::default();
    let files = files.unwrap_or(&default);
    let key = |name: &str| format!("{}.{name}", files.section);
    let mut roots = RootCertStore::empty();
    match &files.cacertfile {
        Some(path) => {
            for certificate in certificates(path, &key("cacertfile"))? {
                roots.add(certificate).map_err(|e| file_error(&key("cacertfile"), path, e))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::debug!("Reading the system's root certificates: {error}.");
            }
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                // Only a problem for https:// URLs, whose handshakes then fail naming the issuer.
                tracing::debug!("No system root certificates found; https:// endpoints need `{}`.", key("cacertfile"));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let invalid = |message: String| TlsError::Invalid { key: files.section.clone(), message };
    let lenient = !files.verify || files.server_name == ServerNameCheck::Off;
    let roots = Arc::new(roots);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots.clone());
    let config = match (&files.certfile, &files.keyfile) {
        (Some(certfile), Some(keyfile)) => {
            let chain = certificates(certfile, &key("certfile"))?;
            let private_key = PrivateKeyDer::from_pem_file(keyfile)
                .map_err(|e| file_error(&key("keyfile"), keyfile, pem_message(e, "a private key")))?;
            builder
                .with_client_auth_cert(chain, private_key)
                .map_err(|e| file_error(&key("keyfile"), keyfile, format!("does not fit `{}`: {e}", key("certfile"))))?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            return Err(TlsError::Invalid { key: key("keyfile"), message: "is required with `certfile` (mTLS)".into() })
        }
        (None, Some(_)) => {
            return Err(TlsError::Invalid { key: key("certfile"), message: "is required with `keyfile` (mTLS)".into() })
        }
    };
    let mut config = config;
    if files.server_name == ServerNameCheck::Off {
        config.enable_sni = false;
    }
    if lenient {
        if !files.verify {
            tracing::warn!(
                "`{}` is false: any server certificate is accepted; the endpoint is not authenticated.",
                key("verify")
            );
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| invalid(format!("no usable root certificates: {e}")))?;
        let verifier = Lenient { webpki, provider, check_chain: files.verify };
        config.dangerous().set_certificate_verifier(Arc::new(verifier));
    }
    Ok(config)
}

/// The name to send as SNI and check the certificate against, when the config gives one.
pub fn server_name(files: Option<&TlsFiles>) -> Option<ServerName<'static>> {
    match &files?.server_name {
        ServerNameCheck::Name(name) => ServerName::try_from(name.clone()).ok(),
        ServerNameCheck::Url | ServerNameCheck::Off => None,
    }
}

/// NanoMQ's relaxations: with `check_chain` off any certificate is accepted; otherwise only a
/// certificate for another name is (`server_name_indication = false`). Handshake signatures are
/// always checked, so the peer still proves it holds the certificate's key.
#[derive(Debug)]
struct Lenient {
    webpki: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
    check_chain: bool,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.check_chain {
            return Ok(ServerCertVerified::assertion());
        }
        match self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn certificates(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(key, path, pem_message(e, "certificates")))?;
    if certificates.is_empty() {
        return Err(file_error(key, path, "holds no PEM certificate"));
    }
    Ok(certificates)
}

fn pem_message(error: rustls::pki_types::pem::Error, what: &str) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(io) => format!("cannot read it: {io}"),
        rustls::pki_types::pem::Error::NoItemsFound => format!("holds no PEM {what}"),
        other => format!("is not valid PEM {what}: {other:?}"),
    }
}

fn file_error(key: &str, path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File { key: key.to_string(), path: path.display().to_string(), message: message.to_string() }
}
