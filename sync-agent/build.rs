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
    aya_build::build_ebpf([package], Toolchain::Custom("nightly"))
}
