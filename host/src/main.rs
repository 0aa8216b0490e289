//! The `mqhook` command: a thin CLI over the library (`run`, `check`).

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use mqhook::delivery::http::{HttpSink, RequestTemplate};
use mqhook::delivery::print::PrintSink;
use mqhook::delivery::Sink;
use mqhook::{Config, GuestModule, Runtime};

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
    /// Where events come from: `ndjson:-` (standard input) or `ndjson:PATH`.
    #[arg(long, default_value = "ndjson:-")]
    ingest: String,
    /// A filter component to run instead of the built-in NanoMQ guest (overrides `guest.path`).
    #[arg(long)]
    guest: Option<PathBuf>,
    /// Print each request on standard output instead of sending it.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Check { config } => check(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> Result<()> {
    let config = Config::load(path)?;
    if !config.enabled {
        eprintln!("note: the webhook is disabled in {} (no webhook section, or enable = false)", path.display());
    }
    println!("{}", serde_json::to_string_pretty(&config)?);
    Ok(())
}

fn run(args: RunArgs) -> Result<()> {
    let config = Config::load(&args.config)?;
    if !config.enabled {
        tracing::warn!("The webhook is disabled in {}: events are counted, nothing is sent.", args.config.display());
    }
    let input = Ingest::parse(&args.ingest)?;
    let guest_path = args.guest.as_deref().or(config.guest.path.as_deref());
    let guest = GuestModule::load(guest_path, &config)?;
    tracing::info!(guest = guest.name(), url = %config.url, "Guest loaded.");
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let sink = if args.dry_run {
            Sink::Print(PrintSink::new(RequestTemplate::new(&config)))
        } else {
            Sink::Http(HttpSink::new(&config).with_context(|| format!("webhook.url in {}", args.config.display()))?)
        };
        let pipeline = Runtime::start(&config, guest, sink);
        let submitter = pipeline.submitter();
        // Reading may block on a pipe, so it runs on its own thread and waits for queue room.
        let reader = tokio::task::spawn_blocking(move || input.read_into(&submitter));
        reader.await.context("the input reader panicked")??;
        let totals = pipeline.shutdown().await;
        println!("summary: {totals}");
        Ok(())
    })
}

/// The `--ingest` source.
enum Ingest {
    Stdin,
    File(PathBuf),
}

impl Ingest {
    fn parse(spec: &str) -> Result<Ingest> {
        match spec.split_once(':') {
            Some(("ndjson", "-")) => Ok(Ingest::Stdin),
            Some(("ndjson", path)) if !path.is_empty() => Ok(Ingest::File(PathBuf::from(path))),
            _ => bail!("--ingest {spec:?}: expected `ndjson:-` (standard input) or `ndjson:PATH`"),
        }
    }

    fn read_into(self, submitter: &mqhook::Submitter) -> Result<()> {
        use mqhook::ingest::ndjson::ingest;
        match self {
            Ingest::Stdin => ingest(std::io::stdin().lock(), "stdin", submitter).context("reading standard input")?,
            Ingest::File(path) => {
                let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                ingest(BufReader::new(file), &path.display().to_string(), submitter)
                    .with_context(|| format!("reading {}", path.display()))?
            }
        };
        Ok(())
    }
}
