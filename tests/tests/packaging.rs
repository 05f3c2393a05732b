//! Installing the agent: the Debian package `cargo xtask deb` makes (checked
//! from the package `cargo xtask test` builds from the tested binary, path
//! in `MLAG_TEST_DEB`), its systemd unit, the man pages against `--help`,
//! the example configs, and the agent's side of `Type=notify` with a real
//! notification socket.

use std::{
    os::unix::{fs::PermissionsExt as _, net::UnixDatagram},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use mlag_testbed::{
    agent::{Agent, TempDir, agent_binary},
    netns::{self, Netns},
};

fn package() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("MLAG_TEST_DEB").context(
        "MLAG_TEST_DEB is not set: run the tests with `cargo xtask test`, which builds the package",
    )?;
    Ok(PathBuf::from(path))
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The package unpacked: (its files, its control files).
fn unpack() -> anyhow::Result<(TempDir, TempDir)> {
    let deb = package()?;
    let files = TempDir::new("mlag-deb")?;
    let control = TempDir::new("mlag-debctl")?;
    output(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(files.path()),
    )?;
    output(
        Command::new("dpkg-deb")
            .arg("-e")
            .arg(&deb)
            .arg(control.path()),
    )?;
    Ok((files, control))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests live in the workspace")
        .to_path_buf()
}

#[test]
fn the_package_installs_the_binary_unit_default_config_man_pages_and_completions()
-> anyhow::Result<()> {
    let deb = package()?;
    let fields = output(
        Command::new("dpkg-deb")
            .arg("-f")
            .arg(&deb)
            .args(["Package", "Section", "Depends"]),
    )?;
    ensure!(
        fields.contains("Package: mlag-sync"),
        "control fields: {fields}"
    );
    ensure!(
        fields.contains("iproute2"),
        "Depends lacks iproute2: {fields}"
    );
    let (files, control) = unpack()?;
    let root = files.path();
    for path in [
        "usr/bin/sync-agent",
        "lib/systemd/system/mlag-sync.service",
        "etc/mlag-sync/agent.toml",
        "usr/share/man/man1/sync-agent.1.gz",
        "usr/share/man/man1/sync-agent-run.1.gz",
        "usr/share/bash-completion/completions/sync-agent",
        "usr/share/zsh/vendor-completions/_sync-agent",
        "usr/share/fish/vendor_completions.d/sync-agent.fish",
        "usr/share/doc/mlag-sync/README.md",
        "usr/share/doc/mlag-sync/examples/switch-in-a-pair.toml",
        "usr/share/doc/mlag-sync/examples/fabric-server.toml",
        "usr/share/doc/mlag-sync/examples/config-center.toml",
        "usr/share/doc/mlag-sync/examples/device.toml",
    ] {
        ensure!(root.join(path).is_file(), "the package lacks /{path}");
    }
    let mode = std::fs::metadata(root.join("usr/bin/sync-agent"))?
        .permissions()
        .mode();
    ensure!(
        mode & 0o111 != 0,
        "/usr/bin/sync-agent is not executable ({mode:o})"
    );
    // The config is a conffile: an upgrade keeps the operator's edits.
    let conffiles = std::fs::read_to_string(control.path().join("conffiles"))
        .context("the package has no conffiles")?;
    ensure!(
        conffiles
            .lines()
            .any(|l| l.trim() == "/etc/mlag-sync/agent.toml"),
        "conffiles: {conffiles}"
    );
    // The default config names no role: the packaged binary refuses it,
    // saying what to add (the unit's ExecStartPre runs this check), until
    // the operator fills it in from an example, which it then accepts.
    let default = root.join("etc/mlag-sync/agent.toml");
    let refused = Command::new(root.join("usr/bin/sync-agent"))
        .arg("check-config")
        .arg(&default)
        .output()?;
    let said = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success()
            && said.contains("nothing to run")
            && said.contains("[dataplane]"),
        "check-config on the default config: {said}"
    );
    let filled = TempDir::new("mlag-conf")?;
    let config = filled.path().join("agent.toml");
    let example =
        std::fs::read_to_string(root.join("usr/share/doc/mlag-sync/examples/device.toml"))?;
    let section = &example[example.find("[rollout.device]").context("device example")?..];
    std::fs::write(
        &config,
        format!("{}\n{section}", std::fs::read_to_string(&default)?),
    )?;
    let checked = output(
        Command::new(root.join("usr/bin/sync-agent"))
            .arg("check-config")
            .arg(&config),
    )?;
    ensure!(
        checked.contains(": ok"),
        "check-config on the filled-in config: {checked}"
    );
    // The completions know the commands.
    let bash =
        std::fs::read_to_string(root.join("usr/share/bash-completion/completions/sync-agent"))?;
    ensure!(
        bash.contains("check-config") && bash.contains("show"),
        "bash completions lack commands"
    );
    Ok(())
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() -> anyhow::Result<()> {
    let (files, _control) = unpack()?;
    let root = files.path();
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/mlag-sync.service"))?;
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "ExecStart=/usr/bin/sync-agent run --config /etc/mlag-sync/agent.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RuntimeDirectory=mlag-sync",
    ] {
        ensure!(unit.contains(line), "the unit lacks {line:?}:\n{unit}");
    }
    // Verified as it would be installed, with ExecStart= pointing into the
    // unpacked package (systemd-analyze checks the command exists and is
    // executable); man pages are not looked up on the host.
    let check = TempDir::new("mlag-unit")?;
    let copy = check.path().join("mlag-sync.service");
    let binary = root.join("usr/bin/sync-agent");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/sync-agent", &binary.display().to_string()),
    )?;
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .context("starting systemd-analyze (apt package systemd)")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "systemd-analyze verify failed: {said}"
    );
    // It only warns about unknown keys or bad values (exit 0): any line
    // about our unit fails the test; other units' noise does not.
    let ours: Vec<&str> = said.lines().filter(|l| l.contains("mlag-sync")).collect();
    ensure!(ours.is_empty(), "systemd-analyze verify: {ours:?}");
    Ok(())
}

/// The subcommand names listed under `Commands:` in `--help` output.
fn commands_in_help(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// Every `--long` option named in `text`.
fn long_options(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect()
}

fn man_page(root: &Path, name: &str) -> anyhow::Result<String> {
    let page = root.join(format!("usr/share/man/man1/{name}.1.gz"));
    ensure!(page.is_file(), "no man page {name}(1) in the package");
    // roff escapes hyphens in options (\-\-config): undo it to compare.
    Ok(output(Command::new("zcat").arg(&page))?.replace("\\-", "-"))
}

#[test]
fn the_man_pages_document_every_command_and_option_that_help_lists() -> anyhow::Result<()> {
    let (files, _control) = unpack()?;
    let root = files.path();
    let binary = root.join("usr/bin/sync-agent");
    let help = output(Command::new(&binary).arg("--help"))?;
    let commands = commands_in_help(&help);
    ensure!(
        commands.len() >= 6 && commands.iter().any(|c| c == "run"),
        "could not read the commands from --help: {help}"
    );
    let main_page = man_page(root, "sync-agent")?;
    for option in long_options(&help) {
        ensure!(main_page.contains(&option), "sync-agent(1) lacks {option}");
    }
    for command in &commands {
        let page = man_page(root, &format!("sync-agent-{command}"))?;
        ensure!(
            main_page.contains(command.as_str()),
            "sync-agent(1) does not list {command}"
        );
        let help = output(Command::new(&binary).args([command.as_str(), "--help"]))?;
        for option in long_options(&help) {
            ensure!(
                page.contains(&option),
                "sync-agent-{command}(1) lacks {option}, which `sync-agent {command} --help` lists"
            );
        }
    }
    Ok(())
}

#[test]
fn every_example_config_passes_check_config_and_has_a_quick_start_in_the_readme()
-> anyhow::Result<()> {
    let examples = workspace().join("examples");
    let readme = std::fs::read_to_string(workspace().join("README.md"))?;
    let mut seen = 0;
    for entry in std::fs::read_dir(&examples)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        seen += 1;
        let checked = output(Command::new(agent_binary()?).arg("check-config").arg(&path))?;
        ensure!(checked.contains(": ok"), "{}: {checked}", path.display());
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        ensure!(
            readme.contains(&format!("examples/{name}")),
            "README.md has no quick start using examples/{name}"
        );
    }
    ensure!(
        seen >= 4,
        "only {seen} example configs in {}",
        examples.display()
    );
    Ok(())
}

/// Notifications the agent sent to the socket, gathered until `until`
/// holds of them or `timeout` passes.
fn gather(
    socket: &UnixDatagram,
    got: &mut Vec<String>,
    timeout: Duration,
    until: impl Fn(&[String]) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while !until(got) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("notifications so far: {got:?}");
        }
        socket.set_read_timeout(Some(left))?;
        match socket.recv(&mut buf) {
            Ok(n) => got.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_string),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[test]
fn under_systemd_the_agent_is_ready_only_once_attached_and_pings_the_watchdog_until_stopped()
-> anyhow::Result<()> {
    let switch = Netns::new("msd")?;
    let host = Netns::new("msdh")?;
    netns::veth(&switch, "m0", &host, "h0")?;
    let dir = TempDir::new("mlag-notify")?;
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path)?;
    let config = r#"
instance = "{instance}"
[dataplane]
member_ports = ["m0"]
peer_macs = ["02:00:00:00:0b:01"]
"#;
    let notify = path.display().to_string();
    // 400 ms watchdog: the agent pings every 200 ms.
    let mut agent = Agent::spawn_with_env(
        &switch,
        config,
        &[],
        &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "400000")],
    )?;
    let mut got = Vec::new();
    gather(&socket, &mut got, Duration::from_secs(30), |g| {
        g.iter().any(|l| l == "READY=1")
    })
    .with_context(|| format!("no READY=1; log:\n{}", agent.log_text()))?;
    // Ready means attached: the program is on the port by now.
    let link = switch.ip(&["-d", "link", "show", "m0"])?;
    ensure!(
        link.contains("xdp"),
        "READY=1 before the XDP program was attached: {link}"
    );
    ensure!(
        got.iter()
            .any(|l| l.starts_with("STATUS=running") && l.contains("dataplane")),
        "no status line naming the roles: {got:?}"
    );
    let ready_at = got.len();
    gather(&socket, &mut got, Duration::from_secs(10), |g| {
        g[ready_at..].iter().filter(|l| *l == "WATCHDOG=1").count() >= 3
    })
    .with_context(|| format!("fewer than 3 watchdog pings; log:\n{}", agent.log_text()))?;
    ensure!(
        got[..ready_at].iter().all(|l| l != "WATCHDOG=1"),
        "a watchdog ping before READY=1: {got:?}"
    );
    let status = agent.stop()?;
    ensure!(status.success(), "the agent exited with {status}");
    gather(&socket, &mut got, Duration::from_secs(5), |g| {
        g.iter().any(|l| l == "STOPPING=1")
    })
    .context("no STOPPING=1 at SIGTERM")?;
    Ok(())
}
