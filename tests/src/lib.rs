//! Helpers shared by the end-to-end tests: build (once per test process) and locate the
//! `sigmaforge` binary and the wasm plugins, so `cargo test -p sigmaforge-e2e` works on its own.
//! The builds use the same cargo, profile and target directory as the tests (cargo releases its
//! build lock before running test binaries), so after `scripts/build.sh` they are no-ops.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The workspace root (the folder with the top-level Cargo.toml).
/// `cargo test` sets `CARGO_MANIFEST_DIR` for the test process too; that runtime value wins over
/// the compile-time one, which is stale when a target dir shared between checkouts (as `.ci/run`
/// does) holds this crate compiled in another checkout.
pub fn workspace_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).filter(|p| p.join("Cargo.toml").is_file());
    let manifest = manifest.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().expect("tests/ is inside the workspace").to_path_buf()
}

/// `$CARGO_TARGET_DIR`, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(p) => {
            let p = PathBuf::from(p);
            if p.is_absolute() { p } else { workspace_root().join(p) }
        }
        None => workspace_root().join("target"),
    }
}

fn cargo() -> Command {
    let mut c = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    c.current_dir(workspace_root());
    c
}

fn run_cargo(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run cargo to build {what}: {e}; run scripts/build.sh first"));
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
        panic!("building {what} failed (try scripts/build.sh):\n{}", tail.join("\n"));
    }
}

/// The release `sigmaforge` binary, built if needed.
pub fn sigmaforge_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let mut cmd = cargo();
        cmd.args(["build", "--release", "--quiet", "-p", "sigmaforge"]);
        run_cargo(cmd, "the sigmaforge binary");
        let bin = target_dir().join("release").join("sigmaforge");
        assert!(bin.is_file(), "{} is missing after the build", bin.display());
        bin
    })
    .clone()
}

/// A workspace wasm crate (`sigma-plugin`, `search-plugin`, `regex-task`, `hostile-plugin`,
/// ...) built for wasm32-wasip2 with the wasm-release profile and +simd128, as scripts/build.sh does.
pub fn wasm_plugin(package: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    // Held during the build: two tests asking for plugins at once build them one after the other.
    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = built.get(package) {
        return p.clone();
    }
    ensure_wasm_target();
    let mut cmd = cargo();
    cmd.args(["build", "--quiet", "--profile", "wasm-release", "--target", "wasm32-wasip2", "-p", package]);
    if std::env::var_os("CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS").is_none() {
        cmd.env("CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS", "-C target-feature=+simd128");
    }
    run_cargo(cmd, &format!("the wasm plugin {package}"));
    let file = target_dir().join("wasm32-wasip2").join("wasm-release").join(format!("{}.wasm", package.replace('-', "_")));
    assert!(file.is_file(), "{} is missing after building {package}", file.display());
    built.insert(package.to_string(), file.clone());
    file
}

fn ensure_wasm_target() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let listed = Command::new("rustup").args(["target", "list", "--installed"]).output();
        let installed = listed.as_ref().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "wasm32-wasip2"));
        if !installed {
            let ok = Command::new("rustup").args(["target", "add", "wasm32-wasip2"]).status().is_ok_and(|s| s.success());
            assert!(ok, "the wasm32-wasip2 target is missing and `rustup target add wasm32-wasip2` failed; run scripts/build.sh");
        }
    });
}

/// A fresh scratch directory under the target dir, named for the test.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = target_dir().join("e2e-scratch").join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Runs the built `sigmaforge` with `args`, feeding `stdin` when given; returns
/// (exit code, stdout, stderr). Compiled plugins are cached under the target dir, so each test
/// process does not recompile them.
pub fn run_sigmaforge(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    run_sigmaforge_bytes(args, stdin.map(str::as_bytes))
}

/// [`run_sigmaforge`] with stdin given as bytes (input that is not UTF-8).
pub fn run_sigmaforge_bytes(args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(sigmaforge_bin())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env("SIGMAFORGE_CACHE", target_dir().join("e2e-cwasm-cache"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sigmaforge");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}
