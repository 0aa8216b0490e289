//! What the basic-auth and ACL callbacks answer, so that the broker allows and refuses exactly
//! what it would without the plugin.
//!
//! - **Receives** mosquitto's own configuration file (the `-c` argument of this process, and the
//!   files its `include_dir`s name), read at init and on every `MOSQ_EVT_RELOAD`.
//! - **Owns** the one decision mqhook takes part in: [`AuthSetup::basic_auth`] and
//!   [`AuthSetup::acl`].
//! - **Hands on** a `MOSQ_ERR_*` answer to the callbacks in `lib.rs`.
//!
//! # Why not always `MOSQ_ERR_PLUGIN_DEFER`
//! mosquitto 2.0.11 calls the plugins' callbacks first and its own `password_file` / `acl_file`
//! checks after them, and it treats "every callback deferred" as a refusal: a plugin that only
//! defers makes a broker without a password file refuse every client that sends a username, and
//! one without an ACL file refuse every publish and subscription. So mqhook defers only when
//! something after it decides (a `password_file`, an `acl_file`, another plugin); when nothing
//! does, it answers what the broker would answer with no check at all: an ACL check passes, and
//! a CONNECT passes when anonymous access is allowed (with none of these checks, mosquitto
//! lets `allow_anonymous` decide for every client, with or without a username). When the setup
//! cannot be read (or `per_listener_settings true`, where each listener has its own checks), it
//! defers, which never lets in what the broker would refuse.

use std::ffi::c_int;
use std::path::{Path, PathBuf};

use crate::sys;

/// What decides authentication and access after mqhook's callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthSetup {
    /// Whether the setup was read; when not, every answer defers.
    known: bool,
    /// A `password_file` or another plugin may decide CONNECTs.
    later_basic_auth: bool,
    /// An `acl_file` or another plugin may decide access.
    later_acl: bool,
    /// `allow_anonymous` in force.
    allow_anonymous: bool,
}

impl AuthSetup {
    /// Defer to everything: the answer when the setup is not known.
    pub const UNKNOWN: AuthSetup =
        AuthSetup { known: false, later_basic_auth: true, later_acl: true, allow_anonymous: false };

    /// Reads the configuration this broker process was started with; `plugin` is the path of
    /// this plugin's `.so`. Returns why the setup is unknown when it cannot be read.
    pub fn detect(plugin: Option<&Path>) -> Result<AuthSetup, String> {
        let cmdline = std::fs::read("/proc/self/cmdline").map_err(|e| format!("reading /proc/self/cmdline: {e}"))?;
        let args: Vec<String> =
            cmdline.split(|b| *b == 0).map(|arg| String::from_utf8_lossy(arg).into_owned()).collect();
        let config = args
            .iter()
            .position(|arg| arg == "-c" || arg == "--config-file")
            .and_then(|at| args.get(at + 1))
            .ok_or("mosquitto was started without -c")?;
        let mut lines = Vec::new();
        read_config(Path::new(config), &mut lines, 0)?;
        Ok(AuthSetup::from_lines(&lines, plugin))
    }

    /// The setup that `lines` (`key value` pairs, includes expanded) describe.
    pub fn from_lines(lines: &[(String, String)], plugin: Option<&Path>) -> AuthSetup {
        let ours = plugin.and_then(|path| path.canonicalize().ok());
        let (mut password_file, mut acl_file, mut other_plugin, mut listener) = (false, false, false, false);
        let mut allow_anonymous = None;
        for (key, value) in lines {
            match key.as_str() {
                "per_listener_settings" if value == "true" => return AuthSetup::UNKNOWN,
                "password_file" => password_file = true,
                "acl_file" => acl_file = true,
                "plugin" | "auth_plugin" => {
                    let path = Path::new(value).canonicalize().ok();
                    if path.is_none() || path != ours {
                        other_plugin = true;
                    }
                }
                "listener" | "port" => listener = true,
                "allow_anonymous" => allow_anonymous = Some(value == "true"),
                _ => {}
            }
        }
        AuthSetup {
            known: true,
            later_basic_auth: password_file || other_plugin,
            later_acl: acl_file || other_plugin,
            // mosquitto 2.0: anonymous access is on by default only with no listener configured.
            allow_anonymous: allow_anonymous.unwrap_or(!listener),
        }
    }

    /// The basic-auth callback's answer.
    pub fn basic_auth(&self) -> c_int {
        if self.known && !self.later_basic_auth && self.allow_anonymous {
            sys::MOSQ_ERR_SUCCESS
        } else {
            sys::MOSQ_ERR_PLUGIN_DEFER
        }
    }

    /// The ACL callback's answer. mosquitto's own `$SYS` write protection runs before it.
    pub fn acl(&self) -> c_int {
        if self.known && !self.later_acl {
            sys::MOSQ_ERR_SUCCESS
        } else {
            sys::MOSQ_ERR_PLUGIN_DEFER
        }
    }

    /// One line for the log: what the callbacks answer.
    pub fn describe(&self) -> String {
        if !self.known {
            return "auth: deferring to the broker's checks (its setup could not be read)".into();
        }
        let word = |code| {
            if code == sys::MOSQ_ERR_SUCCESS {
                "allow, as the broker has no check"
            } else {
                "defer to the broker"
            }
        };
        format!("auth: CONNECT {}; ACL {}", word(self.basic_auth()), word(self.acl()))
    }
}

/// Most nested `include_dir`s followed.
const MAX_INCLUDE_DEPTH: usize = 8;

/// Appends the `key value` lines of `path` (and of the files its `include_dir`s hold, in name
/// order, as mosquitto reads them) to `lines`.
fn read_config(path: &Path, lines: &mut Vec<(String, String)>, depth: usize) -> Result<(), String> {
    if depth > MAX_INCLUDE_DEPTH {
        return Err(format!("include_dir nested deeper than {MAX_INCLUDE_DEPTH}"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let (key, value) = (key.to_string(), value.trim().to_string());
        if key == "include_dir" {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&value)
                .map_err(|e| format!("reading include_dir {value}: {e}"))?
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|file| file.extension().is_some_and(|ext| ext == "conf"))
                .collect();
            files.sort();
            for file in files {
                read_config(&file, lines, depth + 1)?;
            }
        } else {
            lines.push((key, value));
        }
    }
    Ok(())
}

/// The path of the loaded `.so` this code is in.
pub fn own_path() -> Option<PathBuf> {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: dladdr only reads the loader's tables for the address of a function of ours and
    // fills `info`, which is large enough.
    let found = unsafe { libc::dladdr(own_path as *const libc::c_void, info.as_mut_ptr()) };
    if found == 0 {
        return None;
    }
    // SAFETY: dladdr succeeded, so `info` is filled; `dli_fname` is NULL or a NUL-terminated path.
    let name = unsafe { sys::string(info.assume_init().dli_fname) }?;
    Some(PathBuf::from(name))
}
