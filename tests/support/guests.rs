//! The Python and JavaScript example guests (guest/python, guest/js), built from their sources by
//! the toolchains `scripts/test` installs into `target/guest-tools`.
//!
//! They are built here, by the tests, rather than by `host/build.rs`: that keeps `cargo build`
//! working on a machine without python3 or node, while a test run still needs no manual step.
//! Each component is built at most once per test process (a `OnceLock`), and kept in
//! `target/guest-build/<language>/` under a name holding the SHA-256 of everything it is built
//! from (its sources, `wit/`, the pinned toolchain), so a run that changed none of them builds
//! nothing. A missing toolchain fails the test in one line naming the fix.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// The repository's root.
fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Where `scripts/test` installs the toolchains.
fn tools() -> PathBuf {
    workspace().join("target/guest-tools")
}

/// The Python payload filter (guest/python/payload_filter.py), built by componentize-py.
pub fn python_payload_filter() -> &'static str {
    static BUILT: OnceLock<String> = OnceLock::new();
    BUILT.get_or_init(|| {
        let tool = tools().join("py/bin/componentize-py");
        build("python", "payload_filter", &["guest/python/requirements.txt"], &tool, |output| {
            // componentize-py writes `__pycache__` next to the sources: it gets a copy of them.
            let sources = workspace().join("target/guest-build/python/src");
            let _ = std::fs::remove_dir_all(&sources);
            std::fs::create_dir_all(&sources).expect("creating the sources' copy");
            for file in sources_of("python") {
                std::fs::copy(&file, sources.join(file.file_name().unwrap())).expect("copying a guest source");
            }
            let mut command = Command::new(&tool);
            command.current_dir(workspace()).args(["-q", "-d", "wit", "-w", "filter", "componentize", "-p"]);
            command.arg(&sources).args(["payload_filter", "-o"]).arg(output);
            command
        })
    })
}

/// The JavaScript router (guest/js/router.js), built by componentize-qjs with `--sync`.
pub fn js_router() -> &'static str {
    static BUILT: OnceLock<String> = OnceLock::new();
    BUILT.get_or_init(|| qjs("router", "router", &["--sync"]))
}

/// The same router built with componentize-qjs's default, async runtime, which the host refuses.
pub fn js_router_async() -> &'static str {
    static BUILT: OnceLock<String> = OnceLock::new();
    BUILT.get_or_init(|| qjs("router-async", "router", &[]))
}

/// The JavaScript payload filter (guest/js/payload_filter.js), built with `--sync`.
pub fn js_payload_filter() -> &'static str {
    static BUILT: OnceLock<String> = OnceLock::new();
    BUILT.get_or_init(|| qjs("payload_filter", "payload_filter", &["--sync"]))
}

/// A JavaScript guest built against the WIT as it was at 0.1.0 (tests/fixtures/wit-0.1.0).
pub fn js_built_for_0_1_0() -> &'static str {
    static BUILT: OnceLock<String> = OnceLock::new();
    BUILT.get_or_init(|| {
        let tool = tools().join("js/node_modules/.bin/componentize-qjs");
        let fixture = "tests/fixtures/wit-0.1.0";
        let pins =
            ["guest/js/package-lock.json", "tests/fixtures/wit-0.1.0/mqhook.wit", "tests/fixtures/wit-0.1.0/guest.js"];
        build("js", "wit-0.1.0", &pins, &tool, |output| {
            let mut command = Command::new(&tool);
            command.current_dir(workspace()).args(["-w", fixture, "-n", "filter", "-j"]);
            command.arg(format!("{fixture}/guest.js")).arg("--sync").arg("-o").arg(output);
            command
        })
    })
}

/// guest/js/<entry>.js built by componentize-qjs with `flags`, as `target/guest-build/js/<name>-…`.
fn qjs(name: &str, entry: &str, flags: &'static [&'static str]) -> String {
    let tool = tools().join("js/node_modules/.bin/componentize-qjs");
    build("js", name, &["guest/js/package-lock.json"], &tool, |output| {
        let mut command = Command::new(&tool);
        command.current_dir(workspace()).args(["-w", "wit", "-n", "filter", "-j"]);
        command.arg(format!("guest/js/{entry}.js")).args(flags).arg("-o").arg(output);
        command
    })
}

/// Builds `target/guest-build/<language>/<name>-<hash>.wasm` with `command` unless it is there.
fn build(language: &str, name: &str, pins: &[&str], tool: &Path, command: impl FnOnce(&Path) -> Command) -> String {
    let label = if language == "js" { "JavaScript" } else { "Python" };
    assert!(
        tool.exists(),
        "the {label} guests' toolchain is missing: run scripts/test (it installs {} into target/guest-tools)",
        pins.join(", ")
    );
    let dir = workspace().join("target/guest-build").join(language);
    let output = dir.join(format!("{name}-{}.wasm", inputs_hash(language, name, pins)));
    if !output.exists() {
        std::fs::create_dir_all(&dir).expect("creating target/guest-build");
        // Written under a temporary name and renamed: a concurrent test run never reads half a file.
        let partial = output.with_extension(format!("partial-{}", std::process::id()));
        let result = command(&partial).output().expect("running the guest toolchain");
        assert!(
            result.status.success(),
            "building the {language} guest {name} failed:\n{}{}",
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
        std::fs::rename(&partial, &output).expect("moving the built guest into place");
    }
    output.to_str().expect("a UTF-8 path").to_owned()
}

/// SHA-256 (16 hex digits) of what a guest is built from: its language's sources, the WIT, the
/// toolchain's pins, and the name (which stands for the build flags).
fn inputs_hash(language: &str, name: &str, pins: &[&str]) -> String {
    let mut files = sources_of(language);
    files.extend(std::iter::once(workspace().join("wit/mqhook.wit")));
    files.extend(pins.iter().map(|pin| workspace().join(pin)));
    files.sort();
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    for file in files {
        hasher.update(file.file_name().expect("a file name").as_encoded_bytes());
        hasher.update(std::fs::read(&file).expect("reading a guest source"));
    }
    hasher.finalize().iter().take(8).map(|byte| format!("{byte:02x}")).collect()
}

/// The `.py` or `.js` files of guest/<language>.
fn sources_of(language: &str) -> Vec<PathBuf> {
    std::fs::read_dir(workspace().join("guest").join(language))
        .expect("reading the guest's sources")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "py" || ext == "js"))
        .collect()
}
