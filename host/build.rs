//! Builds the first-party plugins (`plugins/`, a workspace of its own) for wasm32-wasip2 so
//! the `pipeline` binary can embed them. A nested cargo with its own target directory: the
//! plugins never compile for the host, and the outer build's lock is not contended.

use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGINS: &[&str] = &[
    "pipeline_postgres",
    "pipeline_mysql",
    "pipeline_redis",
    "pipeline_local",
    "pipeline_gzip",
    "pipeline_age",
    "pipeline_s3",
    "pipeline_pg_snapshot",
    "pipeline_git",
    "pipeline_webhook",
    "pipeline_healthchecks",
    "pipeline_slack",
    "pipeline_sqlite",
    "pipeline_files",
    "pipeline_email",
    "pipeline_misbehave",
];
const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("host/ has a parent")
        .to_path_buf();
    let plugins = root.join("plugins");
    println!(
        "cargo:rerun-if-changed={}",
        plugins.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        plugins.join("Cargo.lock").display()
    );
    // Every crate directory under plugins/ (a new plugin is watched without a line here).
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&plugins)
        .expect("plugins/ is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n != "target"))
        .collect();
    dirs.sort();
    for dir in dirs {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());

    println!("cargo:rerun-if-env-changed=PIPELINE_PREBUILT_PLUGINS");
    // Packagers (and a check of the host alone) can hand in plugins built elsewhere.
    if let Ok(dir) = std::env::var("PIPELINE_PREBUILT_PLUGINS") {
        println!("cargo:rustc-env=PIPELINE_BUILTIN_WASM_DIR={dir}");
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    check_target();
    let target_dir = root.join("target").join("plugins");
    let mut cmd = Command::new(&cargo);
    cmd.args([
        "build",
        "--release",
        "--locked",
        "--target",
        TARGET,
        "--manifest-path",
    ])
    .arg(plugins.join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target_dir);
    // Settings meant for the outer (host) build must not leak into the wasm build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
        "TARGET",
        "HOST",
        "OUT_DIR",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("cannot run cargo to build the plugins");
    if !status.success() {
        panic!("building the first-party plugins for {TARGET} failed (see the errors above)");
    }
    let out = target_dir.join(TARGET).join("release");
    for p in PLUGINS {
        let file = out.join(format!("{p}.wasm"));
        if !file.is_file() {
            panic!("the plugin build did not produce {}", file.display());
        }
    }
    println!(
        "cargo:rustc-env=PIPELINE_BUILTIN_WASM_DIR={}",
        out.display()
    );
}

/// A missing wasm target is the most likely first-build failure: say how to fix it.
fn check_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok());
    if let Some(sysroot) = sysroot {
        let lib = Path::new(sysroot.trim()).join("lib/rustlib").join(TARGET);
        if !lib.is_dir() {
            panic!(
                "\n\nerror: the Rust target {TARGET} is not installed; the first-party plugins are built for it.\n\
                 run: rustup target add {TARGET}\n\n"
            );
        }
    }
}
