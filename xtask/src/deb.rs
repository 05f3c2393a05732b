//! `cargo xtask deb`: the Debian package of the agent, made by cargo-deb
//! from `[package.metadata.deb]` in `sync-agent/Cargo.toml`: the binary,
//! the systemd unit and default config from `packaging/`, the example
//! configs, and man pages and shell completions that the binary itself
//! writes (`sync-agent docs DIR`), so they always match its `--help`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cargo, run, workspace_root};

/// Where the generated man pages and completions go; the package metadata
/// names the same directory.
pub const DOCS_DIR: &str = "target/deb-docs";

/// Builds the package from the already built `binary` (its profile's
/// directory) into `target/debian/` and returns the `.deb`'s path.
pub fn build(binary: &Path, release: bool) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let docs = root.join(DOCS_DIR);
    if docs.exists() {
        std::fs::remove_dir_all(&docs).with_context(|| format!("clearing {}", docs.display()))?;
    }
    run(Command::new(binary).arg("docs").arg(&docs))?;
    // Debian policy: man pages compressed, reproducibly (no name or time).
    let man = docs.join("man");
    for page in std::fs::read_dir(&man).with_context(|| format!("reading {}", man.display()))? {
        run(Command::new("gzip").args(["-9", "-n"]).arg(page?.path()))?;
    }
    let out = root.join("target/debian");
    std::fs::create_dir_all(&out)?;
    let mut cmd = cargo();
    cmd.args(["deb", "--package", "sync-agent", "--no-build", "--output"])
        .arg(&out);
    if !release {
        // The tests package the debug build they already have: the same
        // files, without a release build.
        cmd.args(["--profile", "dev", "--fast", "--no-strip"]);
    }
    let output = cmd.output().with_context(
        || "cannot start `cargo deb` (is cargo-deb installed? `cargo xtask setup`)",
    )?;
    if !output.status.success() {
        bail!(
            "`cargo deb` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // cargo-deb prints the package's path last.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let deb = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("`cargo deb` did not name a package: {stdout}"))?;
    Ok(deb)
}
