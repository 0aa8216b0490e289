//! `https://` endpoints: a CA and certificates generated here (rcgen), a real TLS server on
//! 127.0.0.1, and the real binary configured with NanoMQ's `tls { … }` / `ssl { … }` block.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::support::endpoint::{Behaviour, Endpoint};
use crate::support::{mqhook, Run, Scratch};

const EVENT: &str =
    r#"{"event":"message_publish","from_client_id":"c1","topic":"t","qos":0,"payload":"over tls","ts":1}"#;

/// A certificate authority that signs leaf certificates.
struct Authority {
    certificate: Certificate,
    key: KeyPair,
}

impl Authority {
    /// A CA named `name`.
    fn new(name: &str) -> Authority {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Authority { certificate: params.self_signed(&key).unwrap(), key }
    }

    /// A certificate for `names` signed by this authority, and its key, as PEM.
    fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let certificate = params.signed_by(&key, &self.certificate, &self.key).unwrap();
        (certificate.pem(), key.serialize_pem())
    }

    fn pem(&self) -> String {
        self.certificate.pem()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config presenting a certificate for 127.0.0.1 from `authority`; with `client_ca`, it
/// demands a client certificate signed by that authority.
fn server_config(authority: &Authority, client_ca: Option<&Authority>) -> Arc<rustls::ServerConfig> {
    server_config_for(authority, client_ca, "127.0.0.1")
}

/// The same, with a certificate for `name`.
fn server_config_for(authority: &Authority, client_ca: Option<&Authority>, name: &str) -> Arc<rustls::ServerConfig> {
    let (certificate, key) = authority.issue(&[name]);
    let chain = vec![CertificateDer::from_pem_slice(certificate.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let builder =
        rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().unwrap();
    let builder = match client_ca {
        Some(client_ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(CertificateDer::from_pem_slice(client_ca.pem().as_bytes()).unwrap()).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(builder.with_single_cert(chain, key).unwrap())
}

/// Runs one event against `endpoint` with `tls_block` in the webhook section.
async fn run(scratch: &Scratch, endpoint: &Endpoint, tls_block: &str) -> Run {
    let config = format!(
        "webhook {{\n  url = \"{}/hook\"\n  events = [ {{ event = \"on_message_publish\" }} ]\n  retry {{ max_attempts = 2, base = 10, cap = 10 }}\n{tls_block}\n}}\n",
        endpoint.url()
    );
    let path = scratch.file("nanomq.conf", &config);
    mqhook(&["run", "--ingest", "ndjson:-", "--config", path.to_str().unwrap()], &format!("{EVENT}\n")).await
}

fn write(scratch: &Scratch, name: &str, text: &str) -> PathBuf {
    scratch.file(name, text)
}

#[tokio::test]
async fn a_server_certificate_from_the_configured_ca_is_trusted() {
    let scratch = Scratch::new();
    let authority = Authority::new("test server CA");
    let endpoint =
        Endpoint::start(Behaviour { tls: Some(server_config(&authority, None)), ..Behaviour::default() }).await;
    let ca = write(&scratch, "ca.pem", &authority.pem());
    let result = run(&scratch, &endpoint, &format!("  tls {{ cacertfile = \"{}\" }}", ca.display())).await;
    assert_eq!(result.summary("delivered"), 1, "{}", result.stderr);
    let recorded = endpoint.recorded();
    assert_eq!(recorded.len(), 1);
    assert!(recorded[0].body_text().contains("\"payload\":\"over tls\""));
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_fails_clearly_and_is_not_retried() {
    let scratch = Scratch::new();
    let endpoint = Endpoint::start(Behaviour {
        tls: Some(server_config(&Authority::new("test server CA"), None)),
        ..Behaviour::default()
    })
    .await;
    let stranger = write(&scratch, "other-ca.pem", &Authority::new("some other CA").pem());
    // NanoMQ's spelling of the block.
    let result = run(&scratch, &endpoint, &format!("  ssl {{ cacertfile = \"{}\" }}", stranger.display())).await;
    assert_eq!(result.summary("delivered"), 0);
    assert_eq!(result.summary("failed"), 1);
    assert_eq!(result.summary("retries"), 0, "a certificate problem is permanent: {}", result.stderr);
    assert!(result.stderr.contains("TLS failed") && result.stderr.contains("UnknownIssuer"), "{}", result.stderr);
    assert!(endpoint.recorded().is_empty());
}

#[tokio::test]
async fn a_server_that_requires_client_certificates_takes_ours_and_refuses_none() {
    let scratch = Scratch::new();
    let server_ca = Authority::new("test server CA");
    let client_ca = Authority::new("test client CA");
    let endpoint =
        Endpoint::start(Behaviour { tls: Some(server_config(&server_ca, Some(&client_ca))), ..Behaviour::default() })
            .await;
    let ca = write(&scratch, "ca.pem", &server_ca.pem());
    let (client_certificate, client_key) = client_ca.issue(&["mqhook-client"]);
    let certfile = write(&scratch, "client.pem", &client_certificate);
    let keyfile = write(&scratch, "client.key", &client_key);

    let with = format!(
        "  tls {{\n    cacertfile = \"{}\"\n    certfile = \"{}\"\n    keyfile = \"{}\"\n  }}",
        ca.display(),
        certfile.display(),
        keyfile.display()
    );
    let result = run(&scratch, &endpoint, &with).await;
    assert_eq!(result.summary("delivered"), 1, "{}", result.stderr);

    let without = format!("  tls {{ cacertfile = \"{}\" }}", ca.display());
    let result = run(&scratch, &endpoint, &without).await;
    assert_eq!(result.summary("delivered"), 0);
    assert_eq!(result.summary("failed"), 1);
    assert_eq!(endpoint.recorded().len(), 1, "only the run with a client certificate got through");
}

#[tokio::test]
async fn missing_or_unusable_tls_files_stop_the_start_naming_the_key() {
    let scratch = Scratch::new();
    let endpoint = Endpoint::start(Behaviour {
        tls: Some(server_config(&Authority::new("test server CA"), None)),
        ..Behaviour::default()
    })
    .await;
    let not_pem = write(&scratch, "not.pem", "hello");
    let (certificate, _) = Authority::new("test client CA").issue(&["x"]);
    let certfile = write(&scratch, "client.pem", &certificate);
    let cases = [
        ("  tls { cacertfile = \"/nonexistent/ca.pem\" }".to_string(), "webhook.tls.cacertfile"),
        (format!("  ssl {{ cacertfile = \"{}\" }}", not_pem.display()), "webhook.ssl.cacertfile"),
        (format!("  tls {{ certfile = \"{}\" }}", certfile.display()), "webhook.tls.keyfile"),
        (
            format!("  tls {{\n certfile = \"{}\"\n keyfile = \"{}\" }}", certfile.display(), not_pem.display()),
            "webhook.tls.keyfile",
        ),
    ];
    for (block, key) in cases {
        let result = run(&scratch, &endpoint, &block).await;
        assert!(!result.status.success(), "{block}");
        assert!(result.stderr.contains(key), "{block}: the error names `{key}`:\n{}", result.stderr);
        let config = scratch.0.path().join("nanomq.conf");
        let checked = mqhook(&["check", "--config", config.to_str().unwrap()], "").await;
        assert!(!checked.status.success() && checked.stderr.contains(key), "check finds it too: {}", checked.stderr);
    }
}

#[tokio::test]
async fn nanomqs_verify_and_server_name_indication_keys_relax_the_checks_they_name() {
    let scratch = Scratch::new();
    let authority = Authority::new("test server CA");
    let ca = write(&scratch, "ca.pem", &authority.pem());
    // A certificate for another name than the URL's host (127.0.0.1).
    let elsewhere = Endpoint::start(Behaviour {
        tls: Some(server_config_for(&authority, None, "hooks.example")),
        ..Behaviour::default()
    })
    .await;
    let strict = run(&scratch, &elsewhere, &format!("  tls {{ cacertfile = \"{}\" }}", ca.display())).await;
    assert_eq!(strict.summary("failed"), 1, "by default the name must match");
    assert!(strict.stderr.contains("not valid for name"), "{}", strict.stderr);
    for sni in ["\"hooks.example\"", "false"] {
        let block =
            format!("  tls {{\n    cacertfile = \"{}\"\n    server_name_indication = {sni}\n  }}", ca.display());
        let relaxed = run(&scratch, &elsewhere, &block).await;
        assert_eq!(relaxed.summary("delivered"), 1, "server_name_indication = {sni}: {}", relaxed.stderr);
    }
    // Still checked with server_name_indication = false: the chain.
    let stranger = Endpoint::start(Behaviour {
        tls: Some(server_config_for(&Authority::new("some other CA"), None, "hooks.example")),
        ..Behaviour::default()
    })
    .await;
    let block = format!("  tls {{\n    cacertfile = \"{}\"\n    server_name_indication = false\n  }}", ca.display());
    assert_eq!(run(&scratch, &stranger, &block).await.summary("failed"), 1, "an unknown CA still fails");
    // verify = false takes anything, and says so.
    let anything = run(&scratch, &stranger, "  ssl { verify = false }").await;
    assert_eq!(anything.summary("delivered"), 1, "{}", anything.stderr);
    assert!(anything.stderr.contains("any server certificate is accepted"), "{}", anything.stderr);
}
