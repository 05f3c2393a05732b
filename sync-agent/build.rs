//! Builds the XDP object (`sync-ebpf`, nightly + `-Z build-std=core` for
//! `bpfel-unknown-none`) and puts it in OUT_DIR, so a plain `cargo build`
//! yields an agent with its kernel code embedded. aya-build does this instead
//! of a Cargo artifact dependency because those still have open cargo bugs
//! (see aya-build's docs). `AYA_BUILD_SKIP=1` skips it for quick checks; the
//! agent then refuses to load with a message saying so.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v != "0" && v != "false") {
        // aya-build skips the build but writes nothing; an empty object lets
        // `cargo check`, clippy and unit tests compile (loading then fails
        // with `DataplaneError::NoObject`).
        let out = std::env::var("OUT_DIR").context("OUT_DIR")?;
        std::fs::write(std::path::Path::new(&out).join("sync-ebpf"), [])
            .context("writing the empty eBPF stub")?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "sync-ebpf")
        .ok_or_else(|| anyhow!("sync-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("sync-ebpf manifest has no parent directory"))?;
    let package = Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    // aya-build relays every line of the eBPF build as a `cargo:warning`,
    // which cargo prints on every build of this workspace. Its stdout goes
    // to a file while it runs; the `cargo:` directives other than warnings
    // are passed on, and the warnings only when the build failed.
    let captured =
        std::path::Path::new(&std::env::var("OUT_DIR").context("OUT_DIR")?).join("aya-build.log");
    let result = with_stdout_in(&captured, || {
        aya_build::build_ebpf([package], Toolchain::Custom("nightly"))
    })?;
    let log = std::fs::read_to_string(&captured).unwrap_or_default();
    for line in log.lines() {
        if result.is_err() || !line.starts_with("cargo:warning=") {
            println!("{line}");
        }
    }
    result
}

/// Runs `f` with this process's standard output (fd 1) sent to `path`.
fn with_stdout_in<T>(path: &std::path::Path, f: impl FnOnce() -> T) -> anyhow::Result<T> {
    use std::io::Write as _;
    use std::os::fd::AsRawFd as _;

    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    std::io::stdout().flush()?;
    // SAFETY: dup/dup2 on fd 1 and a file we own; both are checked, and fd 1
    // is put back before returning.
    let saved = unsafe { libc::dup(1) };
    if saved < 0 || unsafe { libc::dup2(file.as_raw_fd(), 1) } < 0 {
        anyhow::bail!(
            "redirecting the eBPF build's output: {}",
            std::io::Error::last_os_error()
        );
    }
    let value = f();
    let _ = std::io::stdout().flush();
    // SAFETY: `saved` is the duplicate of the original fd 1 made above.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    Ok(value)
}
