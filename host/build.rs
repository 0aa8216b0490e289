//! Builds the guest components with the ordinary cargo, for `wasm32-wasip2`, so that `cargo build`
//! of the host is all a newcomer runs. The default guest is embedded in the binary; the test guest's
//! path is handed to the tests.
//!
//! The nested cargo uses its own target directory under `target/` so it never waits on the lock of
//! the outer build.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest components: the built-in one, the test guest, the examples.
const GUESTS: &[&str] = &[
    "mqhook-guest-builtin",
    "mqhook-guest-hostile",
    "mqhook-guest-payload-filter",
    "mqhook-guest-cloudevents",
    "mqhook-guest-router",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for watched in ["guest", "wit", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }
    link_dist(&out_dir, &manifest_dir);
    let target_dir = guest_target_dir(&workspace, &out_dir);
    build(&workspace, &target_dir, GUESTS);
    for guest in GUESTS {
        let file = format!("{}.wasm", guest.replace('-', "_"));
        let built = target_dir.join("wasm32-wasip2/release").join(&file);
        let copied = out_dir.join(&file);
        std::fs::copy(&built, &copied).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
        let name = guest.trim_start_matches("mqhook-guest-").replace('-', "_").to_uppercase();
        println!("cargo:rustc-env=MQHOOK_GUEST_{name}={}", copied.display());
    }
}

/// Fails in one line when the wasm target is missing: rustup adds a toolchain file's targets only
/// when it installs the toolchain itself, so a machine that had `stable` already lacks it.
fn require_wasm_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = Command::new(rustc).args(["--print", "target-libdir", "--target", "wasm32-wasip2"]).output();
    let installed = libdir
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
        .is_some_and(|dir| dir.exists());
    assert!(installed, "the wasm32-wasip2 target is not installed: run `rustup target add wasm32-wasip2`");
}

/// One `cargo build` of `packages` for wasm32-wasip2.
fn build(workspace: &Path, target_dir: &Path, packages: &[&str]) {
    require_wasm_target();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(target_dir);
    for package in packages {
        command.args(["-p", package]);
    }
    // Debug info would triple the components' size and their compile time at start-up; function
    // names stay, so guest backtraces remain readable.
    command.env("CARGO_PROFILE_RELEASE_DEBUG", "false").env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
    // The guests are small: whole-program optimisation of each (one unit, LTO, no incremental)
    // costs seconds and makes the code every event runs faster.
    command
        .env("CARGO_PROFILE_RELEASE_INCREMENTAL", "false")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_LTO", "fat");
    // Flags meant for the host build must not leak into the guest build.
    for var in
        ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "RUSTC_WORKSPACE_WRAPPER"]
    {
        command.env_remove(var);
    }
    let status = command.status().expect("running cargo to build the guest components");
    assert!(status.success(), "building {packages:?} for wasm32-wasip2 failed");
}

/// `<target>/guest-build`, next to the outer build's own profile directories.
fn guest_target_dir(workspace: &Path, out_dir: &Path) -> PathBuf {
    // OUT_DIR is <target>/<profile>/build/<pkg>/out (or with a target triple in between).
    out_dir
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").exists())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace.join("target"))
        .join("guest-build")
}

/// How `host/dist-symbol-order.txt` starts: this, then the [`order_fingerprint`] it was written
/// for, in hex.
const FINGERPRINT_LINE: &str = "# written for ";

/// What the names in `host/dist-symbol-order.txt` depend on besides the code: every mangled name
/// carries a hash of its crate's dependencies, manifest and compiler. FNV-1a over `Cargo.lock`,
/// `Cargo.toml`, `host/Cargo.toml` and `rustc -V`; `scripts/dist-symbol-order` computes the same.
fn order_fingerprint(workspace: &Path) -> u64 {
    let mut inputs = Vec::new();
    for file in ["Cargo.lock", "Cargo.toml", "host/Cargo.toml"] {
        inputs.extend(std::fs::read(workspace.join(file)).unwrap_or_default());
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    if let Ok(version) = Command::new(rustc).arg("-V").output() {
        inputs.extend(version.stdout);
    }
    inputs.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

/// The shipped binary (`--profile dist`: OUT_DIR under `<target>/dist/`) is linked for a small
/// footprint (BENCHMARKS.md: footprint):
/// - stripped here rather than by the profile, so that `MQHOOK_DIST_SYMBOLS=1` builds the same
///   binary with its symbols (the same names: cargo hashes the profile into them), which
///   `scripts/dist-symbol-order` runs to write `dist-symbol-order.txt`;
/// - the functions that steady running runs laid out together, then the start's, in that file's
///   order, so that they fill few pages (with a warning when the file is stale: see
///   [`order_fingerprint`]); x86_64 only, where rustc links with rust-lld;
/// - its relative relocations packed (DT_RELR): at start ld.so reads 14 KiB of them instead of
///   1.3 MiB, pages that otherwise stay resident. Such a binary needs glibc 2.36 or later;
///   `MQHOOK_DIST_PORTABLE=1` builds one without, for older systems.
fn link_dist(out_dir: &Path, manifest_dir: &Path) {
    for var in ["MQHOOK_DIST_PORTABLE", "MQHOOK_DIST_SYMBOLS"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if out_dir.ancestors().nth(3).and_then(Path::file_name) != Some("dist".as_ref()) {
        return;
    }
    let target = |key: &str| std::env::var(key).unwrap_or_default();
    let gnu_linux = target("CARGO_CFG_TARGET_OS") == "linux" && target("CARGO_CFG_TARGET_ENV") == "gnu";
    let mut link_args = Vec::new();
    if std::env::var_os("MQHOOK_DIST_SYMBOLS").is_none() {
        link_args.push("--strip-all".to_owned());
    }
    if gnu_linux && target("CARGO_CFG_TARGET_ARCH") == "x86_64" {
        let order = manifest_dir.join("dist-symbol-order.txt");
        for watched in [order.clone(), manifest_dir.join("Cargo.toml"), manifest_dir.join("../Cargo.toml")] {
            println!("cargo:rerun-if-changed={}", watched.display());
        }
        // Linked from a copy named by its contents: a new order changes the link's arguments,
        // which is what makes cargo link again.
        let text = std::fs::read_to_string(&order).unwrap_or_else(|e| panic!("reading {}: {e}", order.display()));
        let workspace = manifest_dir.parent().expect("host/ is in the workspace");
        let written_for = text.lines().next().and_then(|line| line.strip_prefix(FINGERPRINT_LINE));
        if written_for != Some(&format!("{:016x}", order_fingerprint(workspace))) {
            println!(
                "cargo:warning=host/dist-symbol-order.txt was written for other dependencies or another compiler, \
                 so its names miss this build's and the code is laid out as it comes (1-3 MiB more resident \
                 memory): run scripts/dist-symbol-order"
            );
        }
        let names: String =
            text.lines().filter(|line| !line.starts_with('#')).map(|line| format!("{line}\n")).collect();
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&names, &mut hasher);
        let copy = out_dir.join(format!("symbol-order-{:016x}.txt", std::hash::Hasher::finish(&hasher)));
        std::fs::write(&copy, &names).unwrap_or_else(|e| panic!("writing {}: {e}", copy.display()));
        // A name the file has and the binary lacks (code changed since it was written) is skipped.
        link_args.push(format!("--symbol-ordering-file={}", copy.display()));
        link_args.push("--no-warn-symbol-ordering".to_owned());
    }
    if gnu_linux && std::env::var_os("MQHOOK_DIST_PORTABLE").is_none() {
        link_args.push("-z,pack-relative-relocs".to_owned());
    }
    for arg in link_args {
        println!("cargo:rustc-link-arg-bins=-Wl,{arg}");
    }
}
