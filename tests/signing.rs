//! Signed requests and secrets kept out of config files: every request a real endpoint receives
//! is verified by the `standardwebhooks` package from PyPI (the specification's own library),
//! with each of two rotating secrets, and refused with a wrong one; the secrets and an
//! `authorization` header come from the environment and a file, and never show.

use hyper::StatusCode;

use crate::support::endpoint::{Behaviour, Endpoint, Recorded};
use crate::support::{finish_with_input, mqhook, mqhook_command, ndjson_publishes, python, Scratch, Webhook};

/// The current key, given through the environment.
pub(crate) const CURRENT: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The key being rotated out, given through a file.
const PREVIOUS: &str = "whsec_cGFzc3dvcmQtcm90YXRlZC1vdXQtMjAyNg==";
/// A key the sender never had.
pub(crate) const WRONG: &str = "whsec_d3Jvbmcta2V5LWZvci10ZXN0aW5nLW9ubHk=";
const TOKEN: &str = "Bearer env-token-3e7d";

/// For each request, whether `secret` verifies it, by the `standardwebhooks` package.
pub(crate) fn verified_by(secret: &str, requests: &[Recorded]) -> Vec<bool> {
    const VERIFY: &str = r#"
import json, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
secret, requests = json.load(sys.stdin)
results = []
for request in requests:
    try:
        Webhook(secret).verify(request["body"], request["headers"])
        results.append(True)
    except WebhookVerificationError:
        results.append(False)
print(json.dumps(results))
"#;
    let requests: Vec<serde_json::Value> = requests
        .iter()
        .map(|request| {
            let headers: serde_json::Map<String, serde_json::Value> =
                request.headers.iter().map(|(name, value)| (name.clone(), value.clone().into())).collect();
            serde_json::json!({ "body": request.body_text(), "headers": headers })
        })
        .collect();
    let input = serde_json::json!([secret, requests]).to_string();
    serde_json::from_str(&python(VERIFY, &input)).expect("the verifier's JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_signed_with_each_secret_and_verified_by_the_reference_library() {
    // The first answer is 503: the retry must carry the same webhook-id and verify too.
    let endpoint = Endpoint::start(Behaviour::failing_first(1, StatusCode::SERVICE_UNAVAILABLE)).await;
    let scratch = Scratch::new();
    let previous = scratch.file("previous.secret", &format!("{PREVIOUS}\n"));
    let config = Webhook::new(&endpoint.url())
        .publishes()
        .with("  headers.authorization = \"env:MQHOOK_TEST_TOKEN\"")
        .with(&format!(
            "  signing {{ secrets = [\"env:MQHOOK_TEST_SIGNING_SECRET\", \"file:{}\"] }}",
            previous.display()
        ))
        .write(&scratch, "nanomq.conf");
    let config = config.to_str().unwrap();
    let mqhook_with_secrets = |args: &[&str]| {
        mqhook_command(args)
            .env("MQHOOK_TEST_SIGNING_SECRET", CURRENT)
            .env("MQHOOK_TEST_TOKEN", TOKEN)
            .env("RUST_LOG", "debug,rmqtt=warn,hyper=warn,wasmtime=warn,cranelift=warn")
            .spawn()
            .expect("starting mqhook")
    };
    let run = finish_with_input(
        mqhook_with_secrets(&["run", "--config", config, "--ingest", "ndjson:-"]),
        &ndjson_publishes(5, 2),
    )
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!((run.summary("delivered"), run.summary("retries")), (5, 1));

    let recorded = endpoint.recorded();
    assert_eq!(recorded.len(), 6, "five requests, one of them twice");
    for request in &recorded {
        assert_eq!(request.header("webhook-id"), request.header("idempotency-key"), "the id is the idempotency key");
        assert_eq!(request.header("authorization"), Some(TOKEN), "the header's value comes from the environment");
        assert_eq!(request.header("webhook-signature").unwrap().split(' ').count(), 2, "one signature per secret");
    }
    assert_eq!(verified_by(CURRENT, &recorded), vec![true; 6], "the current secret verifies every request");
    assert_eq!(verified_by(PREVIOUS, &recorded), vec![true; 6], "so does the one being rotated out");
    assert_eq!(verified_by(WRONG, &recorded), vec![false; 6], "a wrong secret verifies none");

    // The secrets are nowhere: not in the log (at debug level), not in `check`.
    let check = finish_with_input(mqhook_with_secrets(&["check", "--config", config]), "").await;
    assert!(check.status.success(), "{}", check.stderr);
    for (place, text) in [("log", &run.stderr), ("check", &check.stdout), ("check's log", &check.stderr)] {
        for secret in [&CURRENT[6..], &PREVIOUS[6..], "env-token-3e7d"] {
            assert!(!text.contains(secret), "a secret in the {place}:\n{text}");
        }
    }
    let checked: serde_json::Value = serde_json::from_str(&check.stdout).unwrap();
    assert_eq!(checked["signing"]["secrets"], serde_json::json!(["<redacted>", "<redacted>"]), "{}", check.stdout);
}

#[tokio::test]
async fn a_missing_or_malformed_secret_is_an_error_that_names_the_key_and_not_the_value() {
    let scratch = Scratch::new();
    for (secrets, names) in [
        ("[\"env:MQHOOK_TEST_UNSET_VARIABLE\"]", "`MQHOOK_TEST_UNSET_VARIABLE` is not set"),
        ("[\"file:/nonexistent/secret\"]", "/nonexistent/secret"),
        ("[\"not-a-whsec-value-9f\"]", "expected `whsec_`"),
        ("[]", "needs at least one secret"),
    ] {
        let config = Webhook::new("http://127.0.0.1:9/")
            .publishes()
            .with(&format!("  signing {{ secrets = {secrets} }}"))
            .write(&scratch, "nanomq.conf");
        let check = mqhook(&["check", "--config", config.to_str().unwrap()], "").await;
        assert!(!check.status.success(), "{secrets} was accepted");
        assert!(check.stderr.contains("webhook.signing.secrets"), "the key is named: {}", check.stderr);
        assert!(check.stderr.contains(names), "{names:?} in {}", check.stderr);
        assert!(!check.stderr.contains("not-a-whsec-value-9f"), "the value is never quoted: {}", check.stderr);
    }
}
