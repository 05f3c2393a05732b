//! `cargo xtask …`: everything that is not a plain `cargo build`.
//!
//! - `setup`: install what a fresh machine lacks (apt packages, the nightly's
//!   rust-src, bpf-linker built against the nightly's own LLVM). Every other
//!   task runs it first; once done it takes seconds.
//! - `build`, `test`, `run` (the namespace lab, or the agent on this host with
//!   `-- --config FILE`), `bench`.
//! - `deb`: the Debian package (binary, systemd unit, default config, man
//!   pages, completions, examples).

mod deb;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "mlag-sync developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install missing tools (apt packages, rust-src, bpf-linker). Idempotent.
    Setup,
    /// Set up, then build the agent with its XDP object embedded.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, then run every test (unit and namespace tests; needs root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, then run: the lab in network namespaces with no
    /// arguments (`-- --rounds N`: stop after N rounds), or the agent on this
    /// host's interfaces with `-- --config FILE`.
    Run {
        /// Arguments for `sync-agent run` (e.g. `--config switch.toml`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fuzz the sync frame decoder for a while (also part of `test`).
    Fuzz {
        /// How long, in seconds.
        #[arg(long, default_value_t = FUZZ_SECONDS)]
        seconds: u64,
    },
    /// Set up, build (release), then make the Debian package in target/debian/
    /// (binary, systemd unit, /etc/mlag-sync/agent.toml, man pages,
    /// completions, example configs).
    Deb {
        /// Package the debug build instead (faster; what the tests check).
        #[arg(long)]
        debug: bool,
    },
    /// Set up, build (release), then print the benchmark figures.
    Bench {
        /// Extra arguments for the benchmark binary.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// A `cargo` command in the workspace with tools on PATH.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root())
        .env("PATH", setup::tool_path());
    cmd
}

/// Runs `cmd`, failing with its command line if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Test counts over every `cargo test` run of `cargo xtask test`.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Adds the counts of a libtest `test result:` line, if `line` is one.
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs `cmd` like [`run`], passing its standard output through while
/// counting the tests it reports.
fn run_counting(cmd: &mut Command, totals: &mut Totals) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let stdout = child.stdout.take().context("test output")?;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        totals.add(&line);
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn build(release: bool) -> anyhow::Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "sync-agent", "--bin", "sync-agent"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let binary = workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("sync-agent");
    Ok(binary)
}

/// Suites `cargo xtask test` runs a second time with the classifier in
/// generic XDP mode (`MLAG_TEST_XDP_MODE=generic`).
const GENERIC_MODE_SUITES: [&str; 4] = ["peersync", "peer_learning", "mclag", "nd_sync"];

/// How long `cargo xtask test` fuzzes the sync frame decoder.
const FUZZ_SECONDS: u64 = 30;

/// Runs the cargo-fuzz target on the sync frame decoder for `seconds`,
/// starting from the committed seed frames; a crash fails the task.
fn fuzz(seconds: u64) -> anyhow::Result<()> {
    let dir = workspace_root().join("sync-common");
    let corpus = dir.join("fuzz/corpus/decode_frame");
    std::fs::create_dir_all(&corpus)?;
    let mut cmd = Command::new("rustup");
    cmd.current_dir(&dir)
        .env("PATH", setup::tool_path())
        .args(["run", "nightly", "cargo", "fuzz", "run", "decode_frame"])
        .arg(&corpus)
        .arg(dir.join("fuzz/seeds"))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-use_value_profile=1");
    run(&mut cmd)
}

/// Builds a binary of the testbed package (lab, benchmarks). They are built
/// only after set-up because they link the agent library, whose build script
/// needs bpf-linker.
fn build_testbed_bin(name: &str, release: bool) -> anyhow::Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "mlag-testbed", "--bin", name]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    Ok(workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join(name))
}

/// Every test, then the pair suites in generic XDP mode, then the fuzz run
/// (only without a filter).
fn test_all(binary: &Path, args: &[String], totals: &mut Totals) -> anyhow::Result<()> {
    // The packaging tests look inside the package made from this build.
    let package = deb::build(binary, false)?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--exclude", "sync-ebpf"])
        .env("SYNC_AGENT_BIN", binary)
        .env("MLAG_TEST_DEB", &package)
        .arg("--")
        .args(args);
    run_counting(&mut cmd, totals)?;
    // The pair suites again with the classifier in generic (skb) mode: veth
    // always accepts driver mode, but switch-ASIC ports get generic mode,
    // where injected frames are seen again.
    let mut generic = cargo();
    generic
        .args(["test", "--package", "mlag-testbed"])
        .args(GENERIC_MODE_SUITES.iter().flat_map(|s| ["--test", s]))
        .env("SYNC_AGENT_BIN", binary)
        .env("MLAG_TEST_XDP_MODE", "generic")
        .arg("--")
        .args(args);
    run_counting(&mut generic, totals)?;
    if args.is_empty() {
        fuzz(FUZZ_SECONDS)?;
    }
    Ok(())
}

/// Free disk a fresh `cargo xtask test` needs for its builds: about 4 GiB of
/// debug artifacts, up to 2 GiB of incremental state, the fuzz build and the
/// package (measured on a fresh clone; see README).
const TEST_BUILD_GIB: u64 = 7;

/// Warns, before a long build, when the disk under `target/` has less room
/// than the build needs: a linker that runs out of disk dies with a bus
/// error that names neither the disk nor the file.
fn warn_if_disk_low(task: &str, needed_gib: u64) {
    let root = workspace_root();
    let target = root.join("target");
    let probe = if target.exists() { target } else { root };
    let Ok(path) = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: statvfs only writes into the zeroed struct we own, and `path`
    // is a valid NUL-terminated string for the call's duration.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return;
    }
    let free_gib = stat.f_bavail as u64 * stat.f_frsize as u64 / (1 << 30);
    if free_gib < needed_gib {
        eprintln!(
            "warning: `cargo xtask {task}` needs about {needed_gib} GiB free under {}, \
             but only {free_gib} GiB is free; the build may fail (a linker out of disk \
             dies with \"Bus error\"). `cargo clean` frees old build artifacts.",
            probe.display()
        );
    }
}

fn ensure_root(task: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "`cargo xtask {task}` needs root: it creates network namespaces and loads XDP programs"
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup::ensure(),
        Task::Build { release } => {
            setup::ensure()?;
            let binary = build(release)?;
            println!("built {}", binary.display());
            Ok(())
        }
        Task::Test { args } => {
            ensure_root("test")?;
            warn_if_disk_low("test", TEST_BUILD_GIB);
            setup::ensure()?;
            let binary = build(false)?;
            let mut totals = Totals::default();
            let result = test_all(&binary, &args, &mut totals);
            println!(
                "cargo xtask test: {} passed, {} failed, {} ignored (driver and generic XDP mode){}",
                totals.passed,
                totals.failed,
                totals.ignored,
                match (&result, args.is_empty()) {
                    (Ok(()), true) => format!(", fuzz {FUZZ_SECONDS} s clean"),
                    (Ok(()), false) => String::new(),
                    (Err(_), _) => ", stopped at the first failing suite".into(),
                }
            );
            result
        }
        Task::Fuzz { seconds } => {
            setup::ensure()?;
            fuzz(seconds)
        }
        Task::Run { args } => {
            ensure_root("run")?;
            setup::ensure()?;
            let binary = build(false)?;
            if args.is_empty() || args[0] == "--rounds" {
                let lab = build_testbed_bin("mlag-lab", false)?;
                let mut cmd = Command::new(lab);
                cmd.env("SYNC_AGENT_BIN", &binary).args(&args);
                run(&mut cmd)
            } else {
                let mut cmd = Command::new(&binary);
                cmd.arg("run").args(&args);
                run(&mut cmd)
            }
        }
        Task::Deb { debug } => {
            setup::ensure()?;
            let binary = build(!debug)?;
            let package = deb::build(&binary, !debug)?;
            println!("built {}", package.display());
            Ok(())
        }
        Task::Bench { args } => {
            ensure_root("bench")?;
            setup::ensure()?;
            let agent = build(true)?;
            let mut bench = Command::new(build_testbed_bin("mlag-bench", true)?);
            bench.env("SYNC_AGENT_BIN", agent).args(&args);
            run(&mut bench)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Totals;

    #[test]
    fn totals_add_up_libtest_result_lines_only() {
        let mut t = Totals::default();
        t.add("test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 3 filtered out; finished in 0.2s");
        t.add("test result: FAILED. 4 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s");
        t.add("test something ... ok");
        t.add("running 5 tests");
        assert_eq!((t.passed, t.failed, t.ignored), (16, 2, 1));
    }
}
