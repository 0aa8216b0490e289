//! mqhook's log lines in mosquitto's log.
//!
//! - **Receives** the `tracing` events of the mqhook library and of this plugin, from any thread.
//! - **Owns** the hand-over: `mosquitto_log_printf` is not safe to call from threads of our own
//!   (with `log_dest topic` it publishes, touching the broker's state), nor from inside one of our
//!   callbacks (that publish runs the ACL callbacks again, ours included). So a line written on
//!   another thread, or during a callback, waits in a bounded queue ([`MAX_WAITING`]) until the
//!   broker's thread flushes it ([`flush`], on every `MOSQ_EVT_TICK` and in cleanup); a line
//!   written on the broker's thread outside callbacks (init, cleanup) goes out at once. Lines
//!   that find the queue full are counted and reported with the next flush.
//! - **Hands on** each line to `mosquitto_log_printf`, prefixed `mqhook: `, at the matching level.

use std::collections::VecDeque;
use std::ffi::{c_int, CString};
use std::io::Write;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::ThreadId;

use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

use crate::sys::{self, BrokerApi};

/// Lines written on other threads that may wait for the broker's thread; more are counted.
pub const MAX_WAITING: usize = 4096;

struct Sink {
    api: BrokerApi,
    broker_thread: ThreadId,
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    lines: VecDeque<(c_int, CString)>,
    dropped: u64,
}

static SINK: OnceLock<Sink> = OnceLock::new();

thread_local! {
    /// Set while one of the plugin's callbacks runs on this thread.
    static IN_CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `body` as a callback: its log lines wait for the next [`flush`].
pub fn in_callback<T>(body: impl FnOnce() -> T) -> T {
    /// Clears the flag however `body` ends (a panic included).
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_CALLBACK.with(|flag| flag.set(self.0));
        }
    }
    let _reset = Reset(IN_CALLBACK.with(|flag| flag.replace(true)));
    body()
}

/// Sends `tracing` output to mosquitto's log from now on; `broker_thread` is the thread the
/// broker calls the plugin on. Later calls (a plugin started again) change nothing.
pub fn install(api: BrokerApi) {
    let fresh = SINK.set(Sink { api, broker_thread: std::thread::current().id(), waiting: Default::default() });
    if fresh.is_ok() {
        let filter = tracing_subscriber::EnvFilter::try_from_env("MQHOOK_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(MosquittoLog)
            .with_ansi(false)
            .without_time()
            .with_level(false)
            .with_target(false)
            .finish();
        // Fails only if the process already has a subscriber; then mqhook logs there.
        let _ = tracing::subscriber::set_global_default(subscriber);
    }
}

/// Writes the lines other threads left; call on the broker's thread only.
pub fn flush() {
    let Some(sink) = SINK.get() else { return };
    let (lines, dropped) = {
        let mut waiting = sink.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        (std::mem::take(&mut waiting.lines), std::mem::take(&mut waiting.dropped))
    };
    for (level, line) in lines {
        sink.write(level, &line);
    }
    if dropped > 0 {
        if let Ok(line) = CString::new(format!("mqhook: {dropped} log lines dropped (the log queue was full).")) {
            sink.write(sys::MOSQ_LOG_WARNING, &line);
        }
    }
}

impl Sink {
    fn write(&self, level: c_int, line: &CString) {
        // SAFETY: called on the broker's thread (see `flush` and `Line::drop`); the format is a
        // literal `%s` and the one argument a NUL-terminated string that outlives the call.
        unsafe { (self.api.log_printf)(level, c"%s".as_ptr(), line.as_ptr()) };
    }

    fn submit(&self, level: c_int, text: &[u8]) {
        let text = String::from_utf8_lossy(text);
        let text = text.trim_end();
        if text.is_empty() {
            return;
        }
        let Ok(line) = CString::new(format!("mqhook: {}", text.replace('\0', " "))) else { return };
        if std::thread::current().id() == self.broker_thread && !IN_CALLBACK.with(std::cell::Cell::get) {
            self.write(level, &line);
            return;
        }
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if waiting.lines.len() < MAX_WAITING {
            waiting.lines.push_back((level, line));
        } else {
            waiting.dropped += 1;
        }
    }
}

/// The `MakeWriter` that gives each `tracing` event a [`Line`].
struct MosquittoLog;

impl<'a> MakeWriter<'a> for MosquittoLog {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { level: sys::MOSQ_LOG_INFO, text: Vec::new() }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line {
        let level = match *meta.level() {
            Level::ERROR => sys::MOSQ_LOG_ERR,
            Level::WARN => sys::MOSQ_LOG_WARNING,
            Level::INFO => sys::MOSQ_LOG_NOTICE,
            Level::DEBUG | Level::TRACE => sys::MOSQ_LOG_DEBUG,
        };
        Line { level, text: Vec::new() }
    }
}

/// One formatted event, handed to the sink when dropped.
struct Line {
    level: c_int,
    text: Vec<u8>,
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if let Some(sink) = SINK.get() {
            sink.submit(self.level, &self.text);
        }
    }
}

/// Writes `text` to mosquitto's log at once; for the broker's thread (init, cleanup), and before
/// `tracing` is set up.
pub fn now(api: &BrokerApi, level: c_int, text: &str) {
    if let Ok(line) = CString::new(format!("mqhook: {}", text.replace('\0', " "))) {
        // SAFETY: as in `Sink::write`: the broker's thread, a literal format, one valid string.
        unsafe { (api.log_printf)(level, c"%s".as_ptr(), line.as_ptr()) };
    }
}
