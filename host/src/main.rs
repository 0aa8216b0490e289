//! The `mqhook` command: a thin CLI over the library (`run`, `check`).

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use mqhook::admin::{Admin, AdminOptions, AdminTokens};
use mqhook::config::{Config, LiveConfig};
use mqhook::delivery::dead_letter::{self, DeadLetters};
use mqhook::delivery::http::HttpSink;
use mqhook::delivery::print::PrintSink;
use mqhook::delivery::{self as delivery, Sink};
use mqhook::guest::GuestEngine;
use mqhook::reload::Reloader;
use mqhook::runtime::{AbortOnDrop, Runtime};

/// The embedded broker when it is built in, else standard input.
#[cfg(feature = "broker")]
const DEFAULT_INGEST: &str = "broker";
#[cfg(not(feature = "broker"))]
const DEFAULT_INGEST: &str = "ndjson:-";

/// NanoMQ-compatible MQTT webhooks, with the filter logic in a WebAssembly component.
#[derive(Parser)]
#[command(name = "mqhook", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the webhook pipeline: read events, filter them in the guest, POST the bodies.
    Run(RunArgs),
    /// Re-send the requests of a dead-letter file (see `webhook.dead_letter`) to `webhook.url`,
    /// or to a named endpoint.
    Replay {
        /// The dead-letter file (NDJSON, one failed request per line).
        file: PathBuf,
        /// Config file giving the URL, headers, pool and retries (and where new failures go).
        #[arg(long, short)]
        config: PathBuf,
        /// Send to this named endpoint (`webhook.endpoints`) with its settings and dead-letter
        /// file, instead of the default endpoint.
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Validate a config file and print the effective configuration as JSON.
    Check {
        /// Config file: NanoMQ HOCON (`nanomq.conf`), NanoMQ's old `web.hook.*` format, or `.hcl`.
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Config file: NanoMQ HOCON (`nanomq.conf`), NanoMQ's old `web.hook.*` format, or `.hcl`.
    #[arg(long, short)]
    config: PathBuf,
    /// Where events come from: `broker` (an embedded MQTT broker, see --listen), `ndjson:-`
    /// (standard input), `ndjson:PATH`, `mqtt://HOST:PORT` or `mqtts://HOST:PORT` (subscribe to
    /// that broker, see `webhook.bridge`), or `bridge` (the broker of `webhook.bridge.url`).
    #[arg(long, default_value = DEFAULT_INGEST)]
    ingest: String,
    /// Address the embedded MQTT broker listens on, with `--ingest broker`.
    #[arg(long, default_value = "127.0.0.1:1883")]
    listen: std::net::SocketAddr,
    /// A filter component to run instead of the built-in NanoMQ guest (overrides `guest.path`).
    #[arg(long)]
    guest: Option<PathBuf>,
    /// Print each request on standard output instead of sending it.
    #[arg(long)]
    dry_run: bool,
    /// Serve the admin API (health, metrics, status, GET/PUT /guest) on this loopback address.
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
    /// A file holding the admin API's bearer token (or set MQHOOK_ADMIN_TOKEN). With a token,
    /// every admin route but /healthz needs `Authorization: Bearer <token>`.
    #[arg(long, value_name = "PATH")]
    admin_token_file: Option<PathBuf>,
    /// A file holding a read-only admin token, for GET routes only (or set
    /// MQHOOK_ADMIN_READ_TOKEN); needs the admin token beside it.
    #[arg(long, value_name = "PATH")]
    admin_read_token_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmqtt=warn,rmqtt_net=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Check { config } => check(&config),
        Command::Replay { file, config, endpoint } => replay(&file, &config, endpoint.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // A closed stderr must not turn an error into a panic.
            let _ = writeln!(std::io::stderr(), "error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `text` and a newline to standard output; a closed pipe (`mqhook check | head -1`) ends
/// the output quietly, as it does for any Unix tool.
fn print_line(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("writing to standard output")
        }
        _ => Ok(()),
    }
}

fn check(path: &Path) -> Result<()> {
    let config = Config::load(path)?;
    if !config.enabled {
        tracing::warn!("The webhook is disabled in {} (no webhook section, or enable = false).", path.display());
    }
    // The certificate files are read at start-up; check them here too.
    for (slot, name) in std::iter::once("default").chain(config.filter.endpoints.iter().map(String::as_str)).enumerate()
    {
        mqhook::delivery::tls::client_config(config.endpoint_delivery(slot).tls.as_ref())
            .with_context(|| format!("in {}, endpoint `{name}`", path.display()))?;
    }
    print_line(&serde_json::to_string_pretty(&config)?)
}

fn replay(file: &Path, config_path: &Path, endpoint: Option<&str>) -> Result<()> {
    let config = Config::load(config_path)?;
    let slot = match endpoint {
        None => 0,
        Some(name) => {
            1 + config.filter.endpoints.iter().position(|known| known == name).with_context(|| {
                format!(
                    "no endpoint is named `{name}` in {}: it has {:?}",
                    config_path.display(),
                    config.filter.endpoints
                )
            })?
        }
    };
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let letters = dead_letter::parse(&text).with_context(|| format!("{} is not a dead-letter file", file.display()))?;
    let requests = letters
        .iter()
        .enumerate()
        .map(|(index, letter)| {
            letter.to_request().map_err(|e| anyhow::anyhow!("{}: entry {}: {e}", file.display(), index + 1))
        })
        .collect::<Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let settings = config.endpoint_delivery(slot).clone();
    let dead_letters = match &settings.dead_letter {
        Some(path) => Some(std::sync::Arc::new(DeadLetters::open(path)?)),
        None => None,
    };
    runtime.block_on(async {
        let sink = HttpSink::for_endpoint(LiveConfig::new(config), slot)
            .with_context(|| format!("webhook in {}", config_path.display()))?;
        let totals = delivery::send_all(requests, Sink::Http(sink), &settings, dead_letters).await;
        print_line(&format!("summary: {totals}"))
    })
}

fn run(args: RunArgs) -> Result<()> {
    let config = Config::load(&args.config)?;
    if !config.enabled {
        tracing::warn!("The webhook is disabled in {}: events are counted, nothing is sent.", args.config.display());
    }
    let input = Ingest::parse(&args.ingest)?;
    let tokens = admin_tokens(&args)?;
    let guest_path = args.guest.as_deref().or(config.guest.path.as_deref());
    let guest = GuestEngine::new()?.load(guest_path, &config.guest, &config.filter)?;
    let url = mqhook::delivery::request_builder::url_without_query(&config.delivery.url, None);
    tracing::info!(guest = guest.name(), url, "Guest loaded.");
    let broker_limits = config.broker;
    let bridge = (config.bridge.clone(), config.filter.clone());
    let live = LiveConfig::new(config);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let sink = if args.dry_run {
            Sink::Print(PrintSink::new(live.clone()))
        } else {
            Sink::Http(
                HttpSink::new(live.clone()).with_context(|| format!("webhook.url in {}", args.config.display()))?,
            )
        };
        let pipeline = Runtime::start(live, guest, sink).with_context(|| format!("in {}", args.config.display()))?;
        let submitter = pipeline.submitter();
        // Dropped (and so stopped) when the input ends, before the drain.
        let reloader = Reloader::new(&args.config, args.guest.as_deref(), pipeline.active_guest());
        let watching = AbortOnDrop(tokio::spawn(reloader.watch()));
        // A swap (a reload, the admin API, a rollback) most likely compiled a guest.
        let mut installed = pipeline.active_guest().subscribe();
        let _releasing = AbortOnDrop(tokio::spawn(async move {
            while installed.changed().await.is_ok() {
                let _ = tokio::task::spawn_blocking(release_clean_pages).await;
            }
        }));
        let admin = match args.admin {
            Some(addr) => {
                let options = AdminOptions { tokens, config_file: std::path::absolute(&args.config).ok() };
                let admin = Admin::bind(addr, pipeline.observer(), options).await?;
                tracing::info!(listen = %admin.local_addr()?, "Admin API listening (/healthz, /readyz, /metrics, /status, /guest).");
                Some(AbortOnDrop(tokio::spawn(admin.serve())))
            }
            None => None,
        };
        match input {
            #[cfg(feature = "broker")]
            Ingest::Broker => serve_broker(args.listen, broker_limits, submitter).await?,
            Ingest::Bridge(url) => {
                let (settings, filter) = bridge;
                let bridge = mqhook::ingest::bridge::Bridge::new(settings, url, &filter, submitter)
                    .with_context(|| format!("in {}", args.config.display()))?;
                release_clean_pages();
                bridge.run(stop_signal()).await?;
            }
            Ingest::Ndjson(source) => {
                release_clean_pages();
                // Reading may block on a pipe, so it runs on its own thread and waits for queue room.
                let reader = tokio::task::spawn_blocking(move || source.read_into(&submitter));
                tokio::select! {
                    read = reader => read.context("the input reader panicked")??,
                    () = stop_signal() => {}
                }
            }
        }
        // Ingest is over; the drain below finishes what was accepted. A signal now exits at once.
        tokio::spawn(async {
            stop_signal().await;
            let _ = writeln!(std::io::stderr(), "mqhook: signal during the drain; exiting at once.");
            std::process::exit(130);
        });
        drop(watching);
        // The admin API stays up through the drain, so its counters show the drain's progress.
        let totals = pipeline.shutdown().await;
        drop(admin);
        print_line(&format!("summary: {totals}"))
    });
    // After a stop signal the input reader may still be blocked on a pipe that never ends: do not
    // wait for it.
    runtime.shutdown_background();
    result
}

/// The admin tokens from `--admin-token-file` / `MQHOOK_ADMIN_TOKEN` and the read-only ones.
fn admin_tokens(args: &RunArgs) -> Result<AdminTokens> {
    let tokens = AdminTokens::load(args.admin_token_file.as_deref(), args.admin_read_token_file.as_deref())?;
    if tokens.write.is_some() && args.admin.is_none() {
        tracing::warn!("An admin token is set, but no --admin listener: it is not used.");
    }
    Ok(tokens)
}

/// Runs the embedded broker until SIGINT or SIGTERM.
#[cfg(feature = "broker")]
async fn serve_broker(
    listen: std::net::SocketAddr,
    limits: mqhook::config::BrokerLimits,
    submitter: mqhook::runtime::Submitter,
) -> Result<()> {
    use mqhook::ingest::broker::{Broker, BrokerConfig};
    let broker = Broker::bind(BrokerConfig { listen, limits }, submitter).await?;
    tracing::info!(listen = %broker.local_addr(), "MQTT broker listening; SIGINT or SIGTERM stops it.");
    release_clean_pages();
    broker.serve(stop_signal()).await?;
    Ok(())
}

/// Start-up or a guest swap is over: the code pages that ran only for it, and the heap it freed,
/// are given back (`mqhook::memory`).
fn release_clean_pages() {
    match mqhook::memory::release_clean_pages() {
        Ok(released) => tracing::debug!(mappings = released.mappings, bytes = released.bytes, "Clean pages released."),
        Err(error) => tracing::debug!("Cannot release the clean pages: {error}."),
    }
}

/// Completes on the next SIGINT (Ctrl-C) or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(error) => {
            tracing::warn!("Cannot listen for SIGTERM ({error}); only SIGINT stops the broker.");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("Stopping: no new events; draining what was accepted (a second signal exits at once).");
}

/// The `--ingest` source.
enum Ingest {
    #[cfg(feature = "broker")]
    Broker,
    Ndjson(NdjsonSource),
    /// An existing broker; `None`: the one of `webhook.bridge.url`.
    Bridge(Option<mqhook::config::BridgeUrl>),
}

/// Where NDJSON events are read from.
enum NdjsonSource {
    Stdin,
    File(PathBuf),
}

impl Ingest {
    fn parse(spec: &str) -> Result<Ingest> {
        match spec.split_once(':') {
            Some(("ndjson", "-")) => Ok(Ingest::Ndjson(NdjsonSource::Stdin)),
            Some(("ndjson", path)) if !path.is_empty() => Ok(Ingest::Ndjson(NdjsonSource::File(PathBuf::from(path)))),
            #[cfg(feature = "broker")]
            None if spec == "broker" => Ok(Ingest::Broker),
            None if spec == "bridge" => Ok(Ingest::Bridge(None)),
            Some(("mqtt" | "mqtts", _)) => match mqhook::config::BridgeUrl::parse(spec) {
                Ok(url) => Ok(Ingest::Bridge(Some(url))),
                // The message never repeats the value: it may hold credentials.
                Err(message) => bail!("--ingest: {message}"),
            },
            _ => bail!(
                "--ingest {spec:?}: expected `broker`, `ndjson:-` (standard input), `ndjson:PATH`, \
                 `mqtt://HOST:PORT`, `mqtts://HOST:PORT` or `bridge`"
            ),
        }
    }
}

impl NdjsonSource {
    fn read_into(self, submitter: &mqhook::runtime::Submitter) -> Result<()> {
        use mqhook::ingest::ndjson::ingest;
        match self {
            NdjsonSource::Stdin => {
                ingest(std::io::stdin().lock(), "stdin", submitter).context("reading standard input")?
            }
            NdjsonSource::File(path) => {
                let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                ingest(BufReader::new(file), &path.display().to_string(), submitter)
                    .with_context(|| format!("reading {}", path.display()))?
            }
        };
        Ok(())
    }
}
