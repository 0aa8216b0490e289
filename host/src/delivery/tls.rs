//! TLS for `https://` endpoints (rustls): which servers to trust and which certificate, if any,
//! to present.
//!
//! The server is verified against `cacertfile` (PEM) or, without one, the system's roots; `certfile`
//! and `keyfile` together present a client certificate (mTLS). SNI is the URL's host name. Every
//! problem with a file is found here, at start-up, and names the config key.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::TlsFiles;

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
                tracing::warn!("No system root certificates found; https:// endpoints need `{}`.", key("cacertfile"));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid { key: files.section.clone(), message: e.to_string() })?
        .with_root_certificates(roots);
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
    Ok(config)
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
