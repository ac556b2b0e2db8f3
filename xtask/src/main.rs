//! Build orchestration. The components must be built for `wasm32-wasip2`
//! before the host's tests or demo can load them, which plain `cargo test`
//! cannot express; these commands do it in one step.
//!
//! - `cargo xtask build`: install the wasm target if missing, build the components
//!   (and the bridge once more with its crash hooks, as `mssp_guest_crash_hooks.wasm`).
//! - `cargo xtask test`:  build, then run every test of the workspace.
//! - `cargo xtask demo`:  build, then run `mssp-bridge demo`.
//! - `cargo xtask lint`:  rustfmt check and clippy (native and wasm32) with -D warnings.

use std::process::{Command, ExitCode};

const WASM_TARGET: &str = "wasm32-wasip2";
/// Components built for the wasm target: the bridge and the test-only probes.
const COMPONENTS: &[&str] = &["mssp-guest", "mssp-probe"];

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

fn ensure_wasm_target() -> Result<(), String> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("rustup is needed to install the {WASM_TARGET} target: {e}"))?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == WASM_TARGET)
    {
        return Ok(());
    }
    run(Command::new("rustup").args(["target", "add", WASM_TARGET]))
}

/// Where cargo puts the release components.
fn wasm_dir() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
    target.join(WASM_TARGET).join("release")
}

fn build_components() -> Result<(), String> {
    ensure_wasm_target()?;
    // The crash suites' build of the bridge (feature `crash-hooks`) first,
    // kept under its own name, then the components that ship.
    run(cargo().args([
        "build",
        "--release",
        "--target",
        WASM_TARGET,
        "-p",
        "mssp-guest",
        "--features",
        "crash-hooks",
    ]))?;
    let dir = wasm_dir();
    std::fs::copy(
        dir.join("mssp_guest.wasm"),
        dir.join("mssp_guest_crash_hooks.wasm"),
    )
    .map_err(|e| format!("keeping the crash-hooks build in {}: {e}", dir.display()))?;
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--target", WASM_TARGET]);
    for c in COMPONENTS {
        cmd.args(["-p", c]);
    }
    run(&mut cmd)
}

/// Runs `cargo test --workspace`, echoing its output, and closes with one
/// line totalling every test binary: `tests: N passed, N failed, N skipped`.
fn run_tests(extra: &[String]) -> Result<(), String> {
    use std::io::{BufRead as _, BufReader};
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--no-fail-fast"])
        .args(extra)
        .stdout(std::process::Stdio::piped());
    eprintln!("+ {cmd:?}");
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start cargo test: {e}"))?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                let count = |word: &str| {
                    rest.split(';')
                        .find_map(|part| part.trim().strip_suffix(word))
                        .and_then(|n| n.trim().rsplit(' ').next()?.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                passed += count(" passed");
                failed += count(" failed");
                ignored += count(" ignored");
            }
        }
    }
    let status = child.wait().map_err(|e| format!("cargo test: {e}"))?;
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo test failed with {status}"))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((t, r)) => (t.as_str(), r),
        None => ("help", &[][..]),
    };
    let result = match task {
        "build" => build_components(),
        "test" => build_components().and_then(|()| run_tests(rest)),
        "demo" => build_components().and_then(|()| {
            run(cargo()
                .args(["run", "--quiet", "-p", "mssp-bridge", "--", "demo"])
                .args(rest))
        }),
        "lint" => build_components()
            .and_then(|()| run(cargo().args(["fmt", "--all", "--", "--check"])))
            .and_then(|()| {
                run(cargo().args([
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]))
            })
            .and_then(|()| {
                let mut cmd = cargo();
                cmd.args(["clippy", "--target", WASM_TARGET]);
                for c in COMPONENTS {
                    cmd.args(["-p", c]);
                }
                run(cmd.args(["--", "-D", "warnings"]))
            }),
        _ => {
            eprintln!("usage: cargo xtask <build|test|demo|lint> [args for cargo test / demo]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: {e}");
            ExitCode::FAILURE
        }
    }
}
