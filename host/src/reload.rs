//! Live reload: swaps in a changed guest or config without stopping or losing events.
//!
//! Triggers: the guest file or the config file changes on disk (polled), or SIGHUP. A reload reads
//! the config, builds the guest (recompiling only when its file changed), runs its `configure` with
//! that config, and only then swaps it in through [`ActiveGuest`]; any failure is logged and the
//! running guest stays. Rules, encoding, guest settings, URL and headers take effect at once;
//! the pool, timeouts, retries, TLS, dead letters, the spool, ordering, batching and queue sizes
//! are read at start only, and a change to them is reported as needing a restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::{Config, ConfigError};
use crate::guest::{ActiveGuest, GuestError};

/// How often the files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Why a reload was refused; the running guest stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The config no longer loads.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The guest does not load, link or accept the config.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// The named endpoints are not the ones running: each has its own queue, spool and delivery,
    /// set up at start.
    #[error("webhook.endpoints changed (names or order): restart mqhook to apply the new ones")]
    Endpoints,
}

/// Watches one config file and its guest, and swaps on change.
pub struct Reloader {
    config_path: PathBuf,
    guest_override: Option<PathBuf>,
    active: ActiveGuest,
    /// Modification times last looked at, to notice changes.
    seen: Stamps,
    /// Modification times of the files the running guest was built from.
    loaded: Stamps,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamps {
    config: Option<SystemTime>,
    guest: Option<SystemTime>,
}

impl Reloader {
    /// Watches `config_path` (and the guest it names, or `guest_override` when given) for the
    /// runtime running `active`.
    pub fn new(config_path: &Path, guest_override: Option<&Path>, active: ActiveGuest) -> Self {
        let unknown = Stamps { config: None, guest: None };
        let mut reloader = Reloader {
            config_path: config_path.to_path_buf(),
            guest_override: guest_override.map(Path::to_path_buf),
            active,
            seen: unknown,
            loaded: unknown,
        };
        reloader.seen = reloader.stamps();
        reloader.loaded = reloader.seen;
        reloader
    }

    fn guest_path(&self) -> Option<PathBuf> {
        self.guest_override.clone().or_else(|| self.active.config().guest.path.clone())
    }

    fn stamps(&self) -> Stamps {
        Stamps { config: modified(&self.config_path), guest: self.guest_path().and_then(|path| modified(&path)) }
    }

    /// Reloads now, as SIGHUP does: the config, then the guest from its file (recompiled whatever
    /// its modification time says); swaps only if both are good. Blocks while compiling.
    pub fn reload(&mut self) -> Result<u64, ReloadError> {
        self.reload_with(true)
    }

    /// Reloads the config, and recompiles the guest when `recompile` is set or its file changed.
    fn reload_with(&mut self, recompile: bool) -> Result<u64, ReloadError> {
        let config_stamp = modified(&self.config_path);
        let config = Config::load(&self.config_path)?;
        if config.filter.endpoints != self.active.config().filter.endpoints {
            return Err(ReloadError::Endpoints);
        }
        let guest_path = self.guest_override.clone().or_else(|| config.guest.path.clone());
        let guest_stamp = guest_path.as_deref().and_then(modified);
        let same_component = !recompile && guest_path == self.guest_path() && guest_stamp == self.loaded.guest;
        let running = self.active.current().1;
        let guest = if same_component {
            running.with_config(&config.guest, &config.filter)?
        } else {
            running.engine().load(guest_path.as_deref(), &config.guest, &config.filter)?
        };
        for (setting, changed) in restart_only_changes(&self.active.config(), &config) {
            if changed {
                tracing::warn!(
                    "`webhook.{setting}` changed in {}; it takes effect after a restart.",
                    self.config_path.display()
                );
            }
        }
        let generation = self.active.swap(guest, config);
        self.loaded = Stamps { config: config_stamp, guest: guest_stamp };
        self.seen = self.loaded;
        Ok(generation)
    }

    /// Reloads whenever a file changes or SIGHUP arrives, until the returned future is dropped.
    /// Must run on a multi-threaded tokio runtime: compiling a guest blocks its thread.
    pub async fn watch(mut self) {
        let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(stream) => Some(stream),
            Err(error) => {
                tracing::warn!("Cannot listen for SIGHUP ({error}); reloading on file changes only.");
                None
            }
        };
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (trigger, recompile) = tokio::select! {
                Some(()) = async { hangups.as_mut()?.recv().await } => ("SIGHUP", true),
                _ = poll.tick() => {
                    if self.stamps() == self.seen {
                        continue;
                    }
                    ("a file change", false)
                }
            };
            match tokio::task::block_in_place(|| self.reload_with(recompile)) {
                Ok(generation) => tracing::info!(generation, "Reloaded after {trigger}."),
                Err(error) => {
                    tracing::error!("Reload after {trigger} failed; the running guest stays: {error}");
                    // Do not retry the same broken files every poll; wait for the next change.
                    self.seen = self.stamps();
                }
            }
        }
    }
}

/// The settings read at start only, and whether each differs between `old` and `new`.
fn restart_only_changes(old: &Config, new: &Config) -> [(&'static str, bool); 11] {
    let (was, now) = (&old.delivery, &new.delivery);
    [
        ("pool_size", was.pool.pool_size != now.pool.pool_size),
        ("pool_idle_timeout", was.pool.idle_timeout != now.pool.idle_timeout),
        ("cancel_timeout", was.timeout != now.timeout),
        ("retry", was.retry != now.retry),
        ("tls", was.tls != now.tls),
        ("dead_letter", was.dead_letter != now.dead_letter),
        ("ordering", was.ordering != now.ordering),
        ("batch", was.batch != now.batch),
        ("spool", old.spool != new.spool),
        ("queues", old.queues != new.queues),
        ("bridge", old.bridge != new.bridge),
    ]
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|meta| meta.modified()).ok()
}
