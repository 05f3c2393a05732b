//! Fresh-machine set-up. Each step checks before it acts, so a second run
//! costs a few `--version` calls.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::run;

/// Debian packages and the command (or, given as an absolute path, the
/// file) that shows each is installed.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("bpftool", "bpftool"),
    ("iproute2", "ip"),
    ("iputils-ping", "ping"),
    // Tests raise neighbour-table and socket limits, and fetch pages.
    ("procps", "sysctl"),
    ("curl", "curl"),
    ("util-linux", "setpriv"),
    // Fabric tests and bench: an external broker and a plain subscriber.
    ("mosquitto", "mosquitto"),
    ("mosquitto-clients", "mosquitto_sub"),
    // Config center on etcd: the client crate's build compiles etcd's
    // protobuf files; its tests start a real etcd.
    ("protobuf-compiler", "protoc"),
    // protoc's well-known types (google/protobuf/descriptor.proto), which
    // etcd's protobuf files import: only recommended by protobuf-compiler,
    // so absent where protoc came without it.
    (
        "libprotobuf-dev",
        "/usr/include/google/protobuf/descriptor.proto",
    ),
    ("etcd-server", "etcd"),
    // The etcd tests' health checks and user set-up.
    ("etcd-client", "etcdctl"),
    // Fabric TLS test: a CA and a broker certificate.
    ("openssl", "openssl"),
    // Metrics tests: `promtool check metrics` and a real Prometheus server (one package).
    ("prometheus", "promtool"),
    // Packaging: man pages are gzipped; the unit is checked with systemd-analyze.
    ("gzip", "gzip"),
    ("systemd", "systemd-analyze"),
    // Inference alarm webhook test: a real Alertmanager receiving the alerts.
    ("prometheus-alertmanager", "prometheus-alertmanager"),
    // Web view test: headless Chromium loads the page, dumps its DOM, takes a screenshot.
    ("chromium", "chromium"),
    // Dataplane bench: traffic through a port with and without the classifier.
    ("iperf3", "iperf3"),
];

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

/// PATH with cargo's bin directory (where bpf-linker is installed) and the
/// sbin directories (where bpftool lives) in front.
pub fn tool_path() -> OsString {
    let mut dirs = vec![cargo_home().join("bin"), "/usr/sbin".into(), "/sbin".into()];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

fn found(program: &str) -> bool {
    if Path::new(program).is_absolute() {
        return Path::new(program).is_file();
    }
    std::env::split_paths(&tool_path()).any(|dir| dir.join(program).is_file())
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.env("PATH", tool_path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .env("PATH", tool_path())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs whatever is missing.
pub fn ensure() -> anyhow::Result<()> {
    ensure_apt_packages()?;
    ensure_nightly_rust_src()?;
    ensure_bpf_linker()?;
    ensure_cargo_fuzz()?;
    ensure_cargo_deb()
}

fn ensure_cargo_deb() -> anyhow::Result<()> {
    ensure_cargo_tool(
        "deb",
        &["cargo-deb", "--locked"],
        "`cargo xtask deb`; the packaging tests check its package",
    )
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    ensure_cargo_tool(
        "fuzz",
        &["cargo-fuzz"],
        "runs the sync frame decoder fuzz target in `cargo xtask test`",
    )
}

/// Installs the cargo subcommand `subcommand` from crates.io (`install`:
/// the crate and its flags) unless `cargo SUBCOMMAND --version` works.
fn ensure_cargo_tool(subcommand: &str, install: &[&str], why: &str) -> anyhow::Result<()> {
    if quiet(Command::new("cargo").args([subcommand, "--version"])) {
        return Ok(());
    }
    eprintln!("xtask: installing {} ({why})", install[0]);
    run(Command::new("cargo")
        .arg("install")
        .args(install)
        .env("PATH", tool_path()))
}

fn ensure_apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(_, cmd)| !found(cmd))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing packages {}: run `cargo xtask setup` as root or `apt-get install {}`",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let sysroot = output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .context("the nightly toolchain is needed to build the XDP program (rustup toolchain install nightly)")?;
    Ok(PathBuf::from(sysroot.trim()))
}

fn ensure_nightly_rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the nightly toolchain (this can take a few minutes)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The nightly's real libLLVM shared object (not the linker script that
/// carries a similar name) and its major version.
fn nightly_llvm(sysroot: &Path) -> anyhow::Result<(PathBuf, String)> {
    let lib = sysroot.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        // libLLVM.so.<major>.<minor>-rust-<version>-nightly
        let Some(rest) = name.strip_prefix("libLLVM.so.") else {
            continue;
        };
        let Some(major) = rest
            .split('.')
            .next()
            .filter(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_digit()))
        else {
            continue;
        };
        let mut magic = [0u8; 4];
        let is_elf = std::fs::File::open(&path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok_and(|()| magic == *b"\x7fELF");
        if is_elf {
            let major = major.to_string();
            return Ok((path, major));
        }
    }
    bail!(
        "no libLLVM.so.<major>.<minor>-rust-*-nightly shared object in {}",
        lib.display()
    )
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    if quiet(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    let (libllvm, major) = nightly_llvm(&sysroot)?;
    // bpf-linker's build looks for $LLVM_PREFIX/lib/libLLVM.so; point it at
    // the nightly's LLVM so no system LLVM of the right version is needed.
    let prefix = crate::workspace_root().join("target/llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    let link = prefix_lib.join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("symlinking {}", link.display()))?;
    eprintln!(
        "xtask: building bpf-linker against the nightly's LLVM {major} ({})",
        libllvm.display()
    );
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("PATH", tool_path())
        .env("LLVM_PREFIX", &prefix)
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", sysroot.join("lib").display()),
        ))?;
    if !quiet(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker was installed but does not run");
    }
    Ok(())
}
