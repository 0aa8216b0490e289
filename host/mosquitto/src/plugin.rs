//! The plugin's life: mqhook's runtime started inside the broker process, and drained when the
//! broker stops.
//!
//! - **Receives** the checked [`Options`] at init, reload requests (`MOSQ_EVT_RELOAD`, mosquitto's
//!   SIGHUP), and the stop (cleanup).
//! - **Owns** the threads mqhook runs on, none of them the broker's: a tokio runtime of its own
//!   ([`TOKIO_THREADS`] threads: delivery, the admin API), the guest workers the mqhook
//!   [`Runtime`] starts, and one reload thread (compiling a guest takes a while; the broker's
//!   thread only asks for it).
//! - **Hands on** a [`Submitter`] to the callbacks (through [`crate::border::Border`]).

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use mqhook::admin::{Admin, AdminError, AdminOptions, AdminTokens, TokenError};
use mqhook::config::{Config, ConfigError, LiveConfig};
use mqhook::delivery::error::DeliveryError;
use mqhook::delivery::request_builder::url_without_query;
use mqhook::delivery::{http::HttpSink, Sink};
use mqhook::reload::Reloader;
use mqhook::runtime::StartError as RuntimeStartError;
use mqhook::{GuestEngine, GuestError, Runtime, Submitter};

use crate::options::{Options, OptionsError};

/// Threads of the plugin's tokio runtime (delivery and the admin API; the guest workers have
/// their own): few, since the broker shares the machine.
pub const TOKIO_THREADS: usize = 2;

/// How long the tokio runtime's threads get to finish once the drain is over.
const TOKIO_STOP: Duration = Duration::from_secs(1);

/// Why the plugin did not start; mosquitto logs it and refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The `plugin_opt_*` lines.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// The mqhook config file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The guest does not load.
    #[error("the guest: {0}")]
    Guest(#[from] GuestError),
    /// The HTTP sink (URL, TLS files).
    #[error("webhook: {0}")]
    Delivery(#[from] DeliveryError),
    /// The spool or the dead-letter file.
    #[error(transparent)]
    Runtime(#[from] RuntimeStartError),
    /// The admin listener.
    #[error("plugin_opt_admin: {0}")]
    Admin(#[from] AdminError),
    /// The admin tokens cannot be read (`plugin_opt_admin_token_file`, …).
    #[error(transparent)]
    AdminToken(#[from] TokenError),
    /// A thread could not be started.
    #[error("starting mqhook's threads: {0}")]
    Threads(#[from] std::io::Error),
}

/// A running mqhook inside mosquitto.
pub struct Plugin {
    options: Options,
    tokio: tokio::runtime::Runtime,
    runtime: Runtime,
    admin: Option<tokio::task::JoinHandle<()>>,
    /// Each message asks the reload thread for one reload; dropping it ends the thread.
    reload: Option<mpsc::SyncSender<()>>,
    reload_thread: Option<JoinHandle<()>>,
}

impl Plugin {
    /// Loads the config and the guest and starts the runtime; nothing runs if anything fails.
    pub fn start(options: Options) -> Result<Plugin, StartError> {
        let config = Config::load(&options.config)?;
        if !config.enabled {
            tracing::warn!(
                "The webhook is disabled in {}: events are counted, nothing is sent.",
                options.config.display()
            );
        }
        let guest = GuestEngine::new()?.load(config.guest.path.as_deref(), &config.guest, &config.filter)?;
        let url = url_without_query(&config.delivery.url, None);
        tracing::info!(guest = guest.name(), "Guest loaded; webhooks go to {url}.");
        let live = LiveConfig::new(config);
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(TOKIO_THREADS)
            .thread_name("mqhook-tokio")
            .enable_all()
            .build()?;
        let runtime = {
            let _inside = tokio.enter();
            Runtime::start(live.clone(), guest, Sink::Http(HttpSink::new(live)?))?
        };
        let admin = match options.admin {
            Some(addr) => {
                let tokens =
                    AdminTokens::load(options.admin_token_file.as_deref(), options.admin_read_token_file.as_deref())?;
                let options = AdminOptions { tokens, config_file: Some(options.config.clone()) };
                let admin = tokio.block_on(Admin::bind(addr, runtime.observer(), options))?;
                tracing::info!(
                    "Admin API listening on {} (/healthz, /readyz, /metrics, /status, /guest).",
                    admin.local_addr()?
                );
                Some(tokio.spawn(admin.serve()))
            }
            None => None,
        };
        // One waiting request is enough: a reload reads the files as they are when it runs.
        let (reload, requests) = mpsc::sync_channel::<()>(1);
        let mut reloader = Reloader::new(&options.config, None, runtime.active_guest());
        let reload_thread = std::thread::Builder::new().name("mqhook-reload".into()).spawn(move || {
            while requests.recv().is_ok() {
                match reloader.reload() {
                    Ok(generation) => tracing::info!(generation, "Reloaded after mosquitto's reload."),
                    Err(error) => tracing::error!("Reload failed; the running guest and config stay: {error}"),
                }
            }
        })?;
        Ok(Plugin { options, tokio, runtime, admin, reload: Some(reload), reload_thread: Some(reload_thread) })
    }

    /// A handle for the callbacks.
    pub fn submitter(&self) -> Submitter {
        self.runtime.submitter()
    }

    /// Asks for a reload of the config and the guest; never waits. A reload already asked for
    /// and not begun covers this one.
    pub fn request_reload(&self) {
        if let Some(reload) = &self.reload {
            let _ = reload.try_send(());
        }
    }

    /// Drains: waits up to `drain_timeout` until every accepted event is delivered, failed for
    /// good, or (with a spool) on disk; then stops every thread. Blocks the calling thread.
    pub fn stop(mut self) {
        drop(self.reload.take());
        if let Some(thread) = self.reload_thread.take() {
            if thread.join().is_err() {
                tracing::error!("The reload thread panicked.");
            }
        }
        let spooled = self.runtime.active_guest().config().spool.is_some();
        let observer = self.runtime.observer();
        let timeout = self.options.drain_timeout;
        let drained = self.tokio.block_on(async { tokio::time::timeout(timeout, self.runtime.shutdown()).await });
        match drained {
            Ok(totals) => tracing::info!("Stopped; every accepted event was handled. summary: {totals}"),
            Err(_) => {
                let totals = observer.metrics().snapshot();
                let fate =
                    if spooled { "they stay in the spool for the next start" } else { "without a spool they are lost" };
                tracing::error!(
                    "The drain took longer than plugin_opt_drain_timeout ({}s); stopping with requests undelivered: {fate}. summary: {totals}",
                    timeout.as_secs_f64()
                );
            }
        }
        if let Some(admin) = self.admin.take() {
            admin.abort();
        }
        self.tokio.shutdown_timeout(TOKIO_STOP);
    }
}
