//! Config loading: NanoMQ's own files parse, and every malformed config names its line and key.

use std::num::NonZeroUsize;

use mqhook::config::{Config, Header, PayloadEncoding, Rule};
use mqhook::EventKind;

use crate::support::{fixtures_dir, mqhook, Scratch};

const SEED: &str = r#"webhook = {
  url = "http://127.0.0.1:80"        # URL where webhooks will send HTTP requests to
  headers.content-type = "application/json" # HTTP header specifying request content type
  body.encoding = "plain"            # Encoding format of the payload field in HTTP body
  pool_size = 32                     # Connection process pool size
  events = [
    {
      event = "on_message_publish"   # Event type
      topic = "a/b/c"                # The specific topic that this event applies to
    }
    {
      event = "on_client_connack"
    }
  ]
}
"#;

fn load(name: &str, text: &str) -> Result<Config, mqhook::config::ConfigError> {
    let scratch = Scratch::new();
    Config::load(&scratch.file(name, text))
}

fn seed_rules() -> Vec<Rule> {
    vec![
        Rule { event: EventKind::MessagePublish, topic: Some("a/b/c".into()), endpoint: None },
        Rule { event: EventKind::ClientConnack, topic: None, endpoint: None },
    ]
}

#[test]
fn seed_block_parses_verbatim() {
    let config = load("nanomq.conf", SEED).unwrap();
    assert!(config.enabled);
    // Nothing lost by default: retries without limit, hooks and a full spool wait.
    assert_eq!((config.delivery.retry.max_attempts, config.delivery.retry.max_age), (None, None));
    assert_eq!(config.queues.when_full, mqhook::config::WhenFull::Block);
    assert_eq!(mqhook::config::SpoolConfig::in_dir("s".into()).on_full, mqhook::config::FullPolicy::Block);
    assert_eq!(config.delivery.url.to_string(), "http://127.0.0.1:80/");
    let content_type = Header::new("content-type".parse().unwrap(), "application/json".parse().unwrap());
    assert_eq!(config.delivery.headers, vec![content_type]);
    assert_eq!(config.filter.encoding, PayloadEncoding::Plain);
    assert_eq!(config.delivery.pool.pool_size, NonZeroUsize::new(32).unwrap());
    assert_eq!(config.delivery.timeout.as_millis(), 5000);
    assert_eq!(config.filter.rules, seed_rules());
}

#[test]
fn every_nanomq_fixture_parses() {
    let mut seen = 0;
    for entry in std::fs::read_dir(fixtures_dir()).unwrap() {
        let path = entry.unwrap().path();
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        match name.as_str() {
            // HOCON files with the documented example block.
            "etc_nanomq_example.conf" | "nanonng_nmq_test.conf" => {
                assert!(config.enabled, "{name}");
                assert_eq!(config.filter.rules, seed_rules(), "{name}");
                assert_eq!(config.delivery.headers[0].value, "application/json");
            }
            "github_scripts_nanomq.conf" => {
                assert_eq!(config.delivery.url.to_string(), "http://127.0.0.1:8888/");
                assert_eq!(
                    config.filter.rules,
                    vec![Rule { event: EventKind::MessagePublish, topic: Some("poc/asan".into()), endpoint: None }]
                );
            }
            // Old format, enabled, one rule per event, event taken from the key.
            "nanonng_nmq_old_test.conf" => {
                assert!(config.enabled);
                assert_eq!(config.filter.rules.iter().map(|r| r.event).collect::<Vec<_>>(), EventKind::ALL.to_vec());
                assert_eq!(config.delivery.pool.pool_size.get(), 32);
                assert_eq!(config.delivery.headers[0].name, "content-type");
            }
            // Old format with `web.hook.enable=false`, and a HOCON file with no webhook section.
            "etc_nanomq_old.conf" | "etc_nanomq.conf" => assert!(!config.enabled, "{name}"),
            other => panic!("a fixture this test does not know: {other}"),
        }
        seen += 1;
    }
    assert_eq!(seen, 6);
}

#[test]
fn hcl_and_old_format_reach_the_same_config() {
    let hcl = load(
        "mqhook.hcl",
        r#"
webhook {
  url = "http://127.0.0.1:80"
  headers = { "content-type" = "application/json" }
  body { encoding = "plain" }
  pool_size = 32
  events = [
    { event = "on_message_publish", topic = "a/b/c" },
    { event = "on_client_connack" },
  ]
}
"#,
    )
    .unwrap();
    let legacy = load(
        "old.conf",
        "web.hook.enable=true\nweb.hook.url=http://127.0.0.1:80\nweb.hook.headers.content-type=application/json\n\
         web.hook.body.encoding_of_payload_field=plain\nweb.hook.pool_size=32\n\
         web.hook.rule.message.publish.1={\"action\": \"on_message_publish\", \"topic\": \"a/b/c\"}\n\
         web.hook.rule.client.connack.1={\"action\": \"on_client_connack\"}\n",
    )
    .unwrap();
    let hocon = load("nanomq.conf", SEED).unwrap();
    for config in [&hcl, &legacy] {
        assert_eq!(
            serde_json::to_value(config).unwrap(),
            serde_json::to_value(&hocon).unwrap(),
            "HCL and the old format must give the seed block's config"
        );
    }
}

#[test]
fn mqhook_extensions_parse() {
    let config = load(
        "mqhook.hcl",
        r#"webhook {
  url = "http://127.0.0.1:9/base?x=1"
  cancel_timeout = "2s"
  retry {
    max_attempts = 7
    base = "50ms"
    cap = "5s"
    max_age = "1m"
    max_replay_size = "1MiB"
  }
  broker {
    max_packet_size = "64KiB"
    max_connections = 100
    max_inflight = 8
    connect_timeout = "2s"
  }
  queues {
    events = 100
    requests = 200
    request_bytes = "1MiB"
    when_full = "250ms"
  }
  tls {
    cacertfile = "ca.pem"
    server_name_indication = "hooks.example"
  }
  spool {
    dir = "spool"
    max_size = "2GiB"
    fsync = "always"
    on_full = "drop_oldest"
  }
  ordering = "per_client"
  guest {
    memory_limit = "16MiB"
    timeout = 250
    workers = 3
    max_instances = 40
    settings = { field = "temp", min = "10" }
  }
}"#,
    )
    .unwrap();
    let delivery = &config.delivery;
    assert_eq!(delivery.timeout.as_millis(), 2000);
    assert_eq!(delivery.retry.max_attempts.map(|n| n.get()), Some(7));
    assert_eq!((delivery.retry.backoff.base().as_millis(), delivery.retry.backoff.cap().as_millis()), (50, 5000));
    assert_eq!(delivery.retry.max_age, Some(std::time::Duration::from_secs(60)));
    assert_eq!(delivery.retry.max_replay_size.map(|size| size.get()), Some(1 << 20));
    let broker = config.broker;
    assert_eq!(
        (broker.max_packet_size.get(), broker.max_connections.get(), broker.max_inflight.get()),
        (64 << 10, 100, 8)
    );
    assert_eq!(broker.connect_timeout.as_millis(), 2000);
    let queues = config.queues;
    assert_eq!((queues.events.get(), queues.requests.get(), queues.request_bytes.get()), (100, 200, 1 << 20));
    assert_eq!(queues.when_full, mqhook::config::WhenFull::Wait(std::time::Duration::from_millis(250)));
    assert_eq!(config.guest.memory_limit.get(), 16 << 20);
    assert_eq!(config.guest.timeout.as_millis(), 250);
    assert_eq!(config.guest.workers.get(), 3);
    assert_eq!(config.guest.max_instances.get(), 40);
    assert_eq!(config.guest.settings, vec![("field".into(), "temp".into()), ("min".into(), "10".into())]);
    let tls = config.delivery.tls.clone().unwrap();
    assert!(tls.cacertfile.unwrap().ends_with("ca.pem"));
    assert_eq!(tls.server_name, mqhook::config::ServerNameCheck::Name("hooks.example".into()));
    assert!(tls.verify);
    let spool = config.spool.unwrap();
    assert!(spool.dir.ends_with("spool") && spool.dir.is_absolute(), "relative to the config file: {:?}", spool.dir);
    assert_eq!((spool.max_size.get(), spool.segment_size.get()), (2 << 30, 64 << 20));
    assert_eq!(
        (spool.fsync, spool.on_full),
        (mqhook::config::FsyncPolicy::Always, mqhook::config::FullPolicy::DropOldest)
    );
    assert_eq!(config.delivery.ordering, mqhook::config::DeliveryOrder::PerClient);
}

/// Each malformed config: file name, text, the line and the key the error must name, and a piece
/// of the message (usually the accepted values).
const MALFORMED: &[(&str, &str, usize, &str, &str)] = &[
    ("unknown-event.conf", "webhook {\n url = \"http://h\"\n events = [\n  { event = \"on_message_publishd\" }\n ]\n}\n", 4, "webhook.events[0].event", "on_message_publish, on_message_delivered"),
    ("unknown-encoding.conf", "webhook {\n url = \"http://h\"\n body.encoding = base63\n}\n", 3, "webhook.body.encoding", "plain, base64, base62"),
    ("bad-url.conf", "webhook {\n url = \"ftp://h/x\"\n}\n", 2, "webhook.url", "http://"),
    ("url-credentials.conf", "webhook {\n url = \"http://alice:s3cret@h/x\"\n}\n", 2, "webhook.url", "headers.authorization"),
    ("url-garbage.conf", "webhook {\n\n url = \"http://\"\n}\n", 3, "webhook.url", "URL"),
    ("pool-zero.conf", "webhook {\n url = \"http://h\"\n pool_size = 0\n}\n", 3, "webhook.pool_size", "at least 1"),
    ("pool-type.conf", "webhook {\n url = \"http://h\"\n pool_size = [1]\n}\n", 3, "webhook.pool_size", "positive integer"),
    ("pool-word.conf", "webhook {\n url = \"http://h\"\n pool_size = many\n}\n", 3, "webhook.pool_size", "positive integer"),
    ("events-type.conf", "webhook {\n url = \"http://h\"\n events = \"on_client_connack\"\n}\n", 3, "webhook.events", "list"),
    ("event-missing.conf", "webhook {\n url = \"http://h\"\n events = [\n  { topic = \"a\" }\n ]\n}\n", 4, "webhook.events[0].event", "required"),
    ("typo-key.conf", "webhook {\n url = \"http://h\"\n pool_sise = 3\n}\n", 3, "webhook.pool_sise", "accepted keys"),
    ("timeout.conf", "webhook {\n url = \"http://h\"\n cancel_timeout = soon\n}\n", 3, "webhook.cancel_timeout", "duration"),
    ("header-name.conf", "webhook {\n url = \"http://h\"\n headers { \"bad header\" = \"x\" }\n}\n", 3, "webhook.headers.bad header", "header name"),
    ("url-missing.conf", "\nwebhook {\n pool_size = 3\n}\n", 2, "webhook.url", "required"),
    ("enable-type.conf", "webhook {\n enable = maybe\n url = \"http://h\"\n}\n", 2, "webhook.enable", "true or false"),
    ("old-pool.conf", "web.hook.url=http://h\n\nweb.hook.pool_size=0\n", 3, "web.hook.pool_size", "at least 1"),
    ("old-encoding.conf", "web.hook.url=http://h\nweb.hook.body.encoding_of_payload_field=hex\n", 2, "web.hook.body.encoding_of_payload_field", "plain, base64, base62"),
    ("old-rule.conf", "web.hook.url=http://h\nweb.hook.rule.message.publishd.1={\"action\": \"x\"}\n", 2, "web.hook.rule.message.publishd.1", "message.publish"),
    ("wrong-type.hcl", "webhook {\n  url = \"http://h\"\n  pool_size = \"many\"\n}\n", 3, "webhook.pool_size", "positive integer"),
    ("topic.conf", "webhook {\n url = \"http://h\"\n events = [\n  { event = \"on_message_publish\"\n    topic = \"a/#/b\" }\n ]\n}\n", 5, "webhook.events[0].topic", "last level"),
    ("retry.conf", "webhook {\n url = \"http://h\"\n retry { base = 1s, cap = 10ms }\n}\n", 3, "webhook.retry.cap", "shorter"),
    ("retry-key.conf", "webhook {\n url = \"http://h\"\n retry {\n  attempts = 3\n }\n}\n", 4, "webhook.retry.attempts", "max_attempts"),
    ("policy.hcl", "webhook {\n  url = \"http://h\"\n  guest {\n    on_failure = \"retry\"\n  }\n}\n", 4, "webhook.guest.on_failure", "skip, builtin, dead_letter"),
    ("policy-file.hcl", "webhook {\n  url = \"http://h\"\n  guest {\n    on_failure = \"dead_letter\"\n  }\n}\n", 4, "webhook.guest.on_failure", "webhook.dead_letter"),
    ("memory.hcl", "webhook {\n  url = \"http://h\"\n  guest {\n    memory_limit = \"lots\"\n  }\n}\n", 4, "webhook.guest.memory_limit", "64MiB"),
    ("spool-dir.conf", "webhook {\n url = \"http://h\"\n spool {\n  max_size = 1GiB\n }\n}\n", 3, "webhook.spool.dir", "required"),
    ("spool-full.conf", "webhook {\n url = \"http://h\"\n spool {\n  dir = s\n  on_full = wait\n }\n}\n", 5, "webhook.spool.on_full", "block, drop_oldest, reject_new"),
    ("spool-fsync.hcl", "webhook {\n  url = \"http://h\"\n  spool {\n    dir = \"s\"\n    fsync = \"sometimes\"\n  }\n}\n", 5, "webhook.spool.fsync", "always"),
    ("ordering.conf", "webhook {\n url = \"http://h\"\n ordering = per_topic\n}\n", 3, "webhook.ordering", "none, per_client"),
    ("sni.conf", "webhook {\n url = \"https://h\"\n ssl {\n  server_name_indication = \"not a host\"\n }\n}\n", 4, "webhook.ssl.server_name_indication", "host name"),
    ("pool-huge.conf", "webhook {\n url = \"http://h\"\n pool_size = 100000000000\n}\n", 3, "webhook.pool_size", "between 1 and 1024"),
    ("queue-huge.conf", "webhook {\n url = \"http://h\"\n queue_size = 99999999999999999999999\n}\n", 3, "webhook.queue_size", "between 1 and 16777216"),
    ("when-full.conf", "webhook {\n url = \"http://h\"\n queues {\n  when_full = sometimes\n }\n}\n", 4, "webhook.queues.when_full", "drop_new"),
    ("queues-key.conf", "webhook {\n url = \"http://h\"\n queues {\n  event = 5\n }\n}\n", 4, "webhook.queues.event", "events, requests, request_bytes"),
    ("workers.hcl", "webhook {\n  url = \"http://h\"\n  guest {\n    workers = 100000\n  }\n}\n", 4, "webhook.guest.workers", "between 1 and 256"),
    ("instances.hcl", "webhook {\n  url = \"http://h\"\n  guest {\n    max_instances = 20000\n  }\n}\n", 4, "webhook.guest.max_instances", "between 1 and 10000"),
    ("memory-huge.hcl", "webhook {\n  url = \"http://h\"\n  guest {\n    memory_limit = \"8GiB\"\n  }\n}\n", 4, "webhook.guest.memory_limit", "between"),
    ("timeout-huge.conf", "webhook {\n url = \"http://h\"\n cancel_timeout = 2h\n}\n", 3, "webhook.cancel_timeout", "unknown unit"),
    ("timeout-long.conf", "webhook {\n url = \"http://h\"\n cancel_timeout = 7200s\n}\n", 3, "webhook.cancel_timeout", "between 1ms and 3600s"),
    ("verify.conf", "webhook {\n url = \"https://h\"\n tls { verify = sometimes }\n}\n", 3, "webhook.tls.verify", "true or false"),
];

#[test]
fn malformed_configs_name_line_and_key() {
    for &(name, text, line, key, hint) in MALFORMED {
        let error = load(name, text).expect_err(name);
        let message = error.to_string();
        assert_eq!(error.line(), Some(line), "{name}: {message}");
        assert!(message.contains(&format!("{name}:{line}:")), "{name}: no file:line in {message}");
        assert!(message.contains(&format!("`{key}`")), "{name}: key `{key}` not named in {message}");
        assert!(message.contains(hint), "{name}: `{hint}` missing from {message}");
        assert!(!message.contains("s3cret"), "{name}: a secret in the error: {message}");
    }
}

#[test]
fn syntax_errors_name_line_and_column() {
    let cases = [
        ("unterminated.conf", "webhook {\n  url = \"http://h\n}\n", 2),
        ("unclosed.conf", "webhook {\n  url = \"http://h\"\n  events = [\n", 4),
        ("broken.hcl", "webhook {\n  url = \"http://h\"\n  pool_size = = 3\n}\n", 3),
    ];
    for (name, text, line) in cases {
        let error = load(name, text).expect_err(name);
        assert_eq!(error.line(), Some(line), "{name}: {error}");
        assert!(error.to_string().contains("syntax error"), "{error}");
    }
}

#[tokio::test]
async fn check_prints_the_effective_config() {
    let scratch = Scratch::new();
    let path = scratch.file("nanomq.conf", SEED);
    let run = mqhook(&["check", "--config", path.to_str().unwrap()], "").await;
    assert!(run.status.success(), "{}", run.stderr);
    let printed: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        printed["queues"],
        serde_json::json!({ "events": 65536, "requests": 65536, "request_bytes": 64 << 20, "when_full": "block" })
    );
    assert_eq!(printed["url"], "http://127.0.0.1:80/");
    assert_eq!(printed["pool_size"], 32);
    assert_eq!(printed["encoding"], "plain");
    assert_eq!(printed["rules"][0]["event"], "on_message_publish");
    assert_eq!(printed["rules"][0]["topic"], "a/b/c");
    assert_eq!(printed["headers"][0]["name"], "content-type");

    // Credentials are redacted, every other header is printed as it is.
    let secret = SEED.replace("pool_size = 32", "pool_size = 32\n  headers.authorization = \"Bearer s3cret-token\"");
    let run = mqhook(&["check", "--config", scratch.file("secret.conf", &secret).to_str().unwrap()], "").await;
    assert!(run.status.success(), "{}", run.stderr);
    assert!(!run.stdout.contains("s3cret") && !run.stderr.contains("s3cret"), "{}", run.stdout);
    let printed: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(printed["headers"][1], serde_json::json!({ "name": "authorization", "value": "<redacted>" }));
    assert_eq!(printed["headers"][0]["value"], "application/json");

    let bad = scratch.file("bad.conf", "webhook {\n url = \"http://h\"\n pool_size = 0\n}\n");
    let run = mqhook(&["check", "--config", bad.to_str().unwrap()], "").await;
    assert!(!run.status.success());
    assert!(run.stderr.contains("bad.conf:3: `webhook.pool_size`"), "{}", run.stderr);
}

#[test]
fn the_bridge_block_parses_with_its_defaults_and_secrets() {
    let scratch = Scratch::new();
    let password = scratch.file("password", "from-file\n");
    let text = format!(
        "webhook {{\n  url = \"http://127.0.0.1:1\"\n  bridge {{\n    url = \"mqtts://broker.example:8884\"\n    \
         client_id = \"hook-1\"\n    username = \"u\"\n    password_file = \"{}\"\n    \
         subscriptions = [\"a/#\", \"b\"]\n    share_group = \"hooks\"\n    protocol = \"3.1.1\"\n    \
         session_expiry = 10m\n  }}\n}}\n",
        password.display()
    );
    let config = Config::load(&scratch.file("bridge.conf", &text)).unwrap();
    let bridge = &config.bridge;
    assert_eq!(bridge.url.as_ref().unwrap().to_string(), "mqtts://broker.example:8884");
    assert_eq!((bridge.client_id.as_str(), bridge.username.as_deref()), ("hook-1", Some("u")));
    assert_eq!(bridge.password.as_ref().unwrap().expose(), "from-file", "the trailing newline is dropped");
    assert_eq!(bridge.subscriptions, ["a/#", "b"]);
    assert_eq!(bridge.protocol, mqhook::config::MqttVersion::V311);
    assert_eq!(bridge.session_expiry.as_secs(), 600);
    assert!(!bridge.clean_start, "sessions are kept by default");
    assert_eq!((bridge.qos, bridge.receive_maximum.get()), (1, 64));
    let json = serde_json::to_string(&config).unwrap();
    assert!(json.contains("\"password\":\"<redacted>\"") && !json.contains("from-file"), "{json}");
    assert!(!format!("{config:?}").contains("from-file"));
}

#[tokio::test]
async fn the_bridge_password_can_come_from_the_environment() {
    let scratch = Scratch::new();
    let text =
        "webhook {\n  url = \"http://127.0.0.1:1\"\n  bridge { password_env = \"MQHOOK_TEST_BRIDGE_PASSWORD\" }\n}\n";
    let config = scratch.file("env.conf", text);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqhook"))
        .args(["check", "--config", config.to_str().unwrap()])
        .env("MQHOOK_TEST_BRIDGE_PASSWORD", "from-env")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("\"password\": \"<redacted>\"") && !stdout.contains("from-env"), "{stdout}");
}

#[test]
fn bad_bridge_settings_name_their_line_and_key() {
    let cases = [
        ("  bridge { url = \"http://b:1\" }", "webhook.bridge.url", "mqtt://"),
        ("  bridge { url = \"mqtt://user:pw@b:1\" }", "webhook.bridge.url", "credentials"),
        ("  bridge { qos = 3 }", "webhook.bridge.qos", "0, 1 or 2"),
        ("  bridge { protocol = 6 }", "webhook.bridge.protocol", "accepted: 5, 3.1.1"),
        ("  bridge { share_group = \"a/b\" }", "webhook.bridge.share_group", "without `/`"),
        ("  bridge { password = \"x\", password_env = \"Y\" }", "webhook.bridge.password_env", "one of"),
        ("  bridge { password_env = \"MQHOOK_TEST_UNSET_VARIABLE\" }", "webhook.bridge.password_env", "not set"),
        ("  bridge { receive_maximum = 0 }", "webhook.bridge.receive_maximum", "at least 1"),
        ("  bridge { colour = 1 }", "webhook.bridge.colour", "unknown key"),
        ("  ordering = per_client\n  bridge { share_group = \"g\" }", "webhook.bridge.share_group", "hash_clientid"),
    ];
    for (block, key, message) in cases {
        let text = format!("webhook {{\n  url = \"http://127.0.0.1:1\"\n{block}\n}}\n");
        let error = load("bad.conf", &text).unwrap_err().to_string();
        assert!(error.contains(key) && error.contains(message), "{block}: {error}");
        assert!(error.contains("bad.conf:") && !error.contains("pw@"), "{error}");
    }
    let text = "webhook {\n  url = \"http://127.0.0.1:1\"\n  ordering = per_client\n  \
                bridge { share_group = \"g\", share_strategy = hash_clientid }\n}\n";
    assert!(load("ok.conf", text).is_ok(), "a broker that hashes by client id keeps per-client order");
}
