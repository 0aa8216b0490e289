//! The precompiled-component cache: start-ups and swaps skip compiling a guest seen before.
//!
//! Keyed by the component's SHA-256 and the engine's compatibility hash (wasmtime version, target,
//! compiler settings), so a changed guest or engine never reads a stale artifact. Files are written
//! to a temporary name and renamed, so a crash never leaves half an artifact under a real key.
//! Any cache problem is logged and the guest is compiled as if there were no cache.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use wasmtime::component::Component;
use wasmtime::Engine;

/// Where compiled guests are kept.
pub(crate) struct ComponentCache {
    dir: PathBuf,
}

impl ComponentCache {
    /// A cache in `dir`, created (owner-only) if missing.
    pub(crate) fn new(dir: &Path) -> Option<Self> {
        match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
            Ok(()) => Some(ComponentCache { dir: dir.to_path_buf() }),
            Err(error) => {
                tracing::warn!("Guest cache {} unusable, compiling without it: {error}.", dir.display());
                None
            }
        }
    }

    fn path_for(&self, engine: &Engine, sha256: &str) -> PathBuf {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        self.dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish()))
    }

    /// The cached component, if one was stored for these bytes and this engine.
    pub(crate) fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.path_for(engine, sha256);
        if !path.exists() {
            return None;
        }
        match deserialize(engine, &path) {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::warn!("Ignoring the cached guest {}: {error:#}.", path.display());
                None
            }
        }
    }

    /// Stores a compiled component.
    pub(crate) fn store(&self, engine: &Engine, sha256: &str, component: &Component) {
        let path = self.path_for(engine, sha256);
        // Unique per writer: threads and processes may store the same guest at once.
        let temporary = path.with_extension(format!("tmp-{}-{:016x}", std::process::id(), fastrand::u64(..)));
        let written = component
            .serialize()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))
            .and_then(|bytes| std::fs::write(&temporary, bytes))
            .and_then(|()| std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600)))
            .and_then(|()| std::fs::rename(&temporary, &path));
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temporary);
            tracing::warn!("Cannot cache the compiled guest at {}: {error}.", path.display());
        }
    }
}

/// Reads a precompiled component into memory (not mapped: a file changed under a mapping would
/// crash the host).
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    let bytes = std::fs::read(path)?;
    // SAFETY: wasmtime runs precompiled code without re-validating it, so the bytes must be ones
    // `Component::serialize` wrote. Only mqhook writes this directory, created owner-only (0700)
    // with owner-only files; wasmtime itself refuses artifacts from another engine configuration
    // and ones that are not artifacts at all.
    unsafe { Component::deserialize(engine, &bytes) }
}
