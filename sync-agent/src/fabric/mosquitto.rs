//! A server's broker as a supervised mosquitto process
//! (`broker = "mosquitto"`), the alternative to the in-process rumqttd.
//!
//! Why it exists: rumqttd 0.20 keeps fixed per-connection queues (200
//! slots of 392- and 248-byte packets, compile-time constants), about
//! 70 KiB resident per connection, so a server of 1,000 members holds
//! ~100 MiB for its broker alone; mosquitto holds ~11 KiB per connection
//! (measured: 10.9 MiB resident with 1,000 subscribers). It needs the
//! `mosquitto` binary (Debian package `mosquitto`).
//!
//! The agent writes the broker's config (listener on the server address,
//! TLS when `[fabric.tls]` gives the broker a certificate, no persistence:
//! the active server rewrites what it retains at every connect), starts
//! mosquitto, and restarts it when it exits, with the same back-off and
//! `broker_restarts` counter as the embedded broker. The child gets
//! `PR_SET_PDEATHSIG`, so it dies with the agent even when the agent is
//! SIGKILLed (members then fail over exactly as when the agent dies with
//! an in-process broker; an orphan broker would keep members away from the
//! backup server), and the agent's hard open-file limit as its soft one (a
//! connection is a file). It runs as the agent's user (`user root` when
//! that is root): mosquitto's own switch to its user would clear the
//! parent-death signal.

use std::{
    io::Write as _,
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::{broker::MAX_BACKOFF, config::TlsConfig as FabricTls, wire::MAX_MESSAGE};

/// Where the binary is looked for when it is not on `PATH` (Debian puts
/// it in /usr/sbin, which is not on every user's `PATH`).
const FALLBACK_DIRS: [&str; 2] = ["/usr/sbin", "/usr/local/sbin"];

/// The mosquitto binary: on `PATH`, else in the usual sbin directories.
pub fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(FALLBACK_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join("mosquitto"))
        .find(|candidate| candidate.is_file())
}

/// The listener's TLS: its certificate and key, and the CA whose
/// certificates clients must present (mutual TLS), if any.
pub struct ListenerTls<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub client_ca: Option<&'a Path>,
}

/// The broker's config file text.
pub fn config_text(listen: SocketAddr, tls: Option<ListenerTls<'_>>) -> String {
    let mut text = format!(
        "# Written by sync-agent for its fabric broker; rewritten at every start.\n\
         listener {port} {ip}\n\
         allow_anonymous true\n\
         persistence false\n\
         max_connections -1\n\
         max_packet_size {max_packet}\n\
         # A burst to one subscriber (every ack of a config round to its\n\
         # origin, a fabric's cold start) must queue, not drop: mosquitto\n\
         # drops QoS 1 messages beyond this (its default is 1,000).\n\
         max_queued_messages 100000\n\
         # Stay the agent's user: mosquitto started as root would switch to\n\
         # its own user, and changing user clears the parent-death signal\n\
         # that takes it down with the agent (rumqttd runs as the agent too).\n\
         user root\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n",
        port = listen.port(),
        ip = listen.ip(),
        max_packet = MAX_MESSAGE + 4096,
    );
    if let Some(tls) = tls {
        text.push_str(&format!(
            "certfile {}\nkeyfile {}\n",
            tls.cert.display(),
            tls.key.display()
        ));
        if let Some(ca) = tls.client_ca {
            text.push_str(&format!(
                "# Mutual TLS: no client without a certificate from this CA.\n\
                 cafile {}\n\
                 require_certificate true\n",
                ca.display()
            ));
        }
    }
    text
}

/// Starts mosquitto listening on `listen`, supervised, for the life of the
/// process; returns its restart counter. Fails when the binary is missing,
/// the port is taken or the config cannot be written.
pub fn start(listen: SocketAddr, tls: Option<&FabricTls>) -> anyhow::Result<Arc<AtomicU64>> {
    let binary = binary().ok_or_else(|| {
        anyhow::anyhow!(
            "fabric.broker = \"mosquitto\" needs the mosquitto binary (Debian package \
             mosquitto): not on PATH nor in {}",
            FALLBACK_DIRS.join(", ")
        )
    })?;
    drop(
        std::net::TcpListener::bind(listen)
            .map_err(|e| anyhow::anyhow!("mosquitto cannot listen on {listen}: {e}"))?,
    );
    let cert_key = match tls {
        Some(FabricTls {
            cert_file: Some(cert),
            key_file: Some(key),
            client_ca_file,
            ..
        }) => {
            for file in [Some(cert), Some(key), client_ca_file.as_ref()]
                .into_iter()
                .flatten()
            {
                if !file.is_file() {
                    anyhow::bail!("fabric.tls: {} does not exist", file.display());
                }
            }
            Some(ListenerTls {
                cert,
                key,
                client_ca: client_ca_file.as_deref(),
            })
        }
        _ => None,
    };
    let config_path = std::env::temp_dir().join(format!(
        "mlag-sync-mosquitto-{}-{}.conf",
        std::process::id(),
        listen.port()
    ));
    let config = config_text(listen, cert_key);
    // Written once here so that an unwritable directory is a start error.
    write_config(&config_path, &config)?;
    let restarts = Arc::new(AtomicU64::new(0));
    let counter = restarts.clone();
    // The thread that forks must outlive the child (PDEATHSIG fires when
    // the forking thread ends), so one thread does it all, forever.
    std::thread::Builder::new()
        .name("mqtt-mosquitto".into())
        .spawn(move || supervise(&binary, &config_path, &config, listen, &counter))?;
    wait_listening(listen, Duration::from_secs(3));
    Ok(restarts)
}

fn write_config(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = std::fs::File::create(path)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}

/// Runs mosquitto again and again. The config file exists only while a
/// mosquitto is starting (it reads it once): nothing is left behind in the
/// temporary directory, even when the agent is SIGKILLed later.
fn supervise(
    binary: &Path,
    config_path: &Path,
    config: &str,
    listen: SocketAddr,
    restarts: &AtomicU64,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let started = Instant::now();
        if let Err(err) = write_config(config_path, config) {
            tracing::error!(%listen, "mosquitto config: {err}");
        }
        let mut command = Command::new(binary);
        command
            .arg("-c")
            .arg(config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: only async-signal-safe calls (prctl, getrlimit,
        // setrlimit) between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                    limit.rlim_cur = limit.rlim_max;
                    libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                }
                Ok(())
            });
        }
        match command.spawn() {
            Ok(mut child) => {
                tracing::info!(%listen, pid = child.id(), "mosquitto started");
                wait_listening(listen, Duration::from_secs(3));
                let _ = std::fs::remove_file(config_path);
                match child.wait() {
                    Ok(status) => tracing::error!(%listen, %status, "mosquitto exited; restarting"),
                    Err(err) => tracing::error!(%listen, "waiting for mosquitto: {err}"),
                }
            }
            Err(err) => tracing::error!(%listen, "cannot start mosquitto: {err}; retrying"),
        }
        if started.elapsed() > MAX_BACKOFF * 6 {
            backoff = Duration::from_millis(250);
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        restarts.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits until `listen` accepts a connection (or `timeout`), so members
/// that connect right after start find the broker; not fatal: they retry.
fn wait_listening(listen: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(100)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(%listen, "mosquitto not accepting connections yet; members will retry");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_listens_on_the_server_address_and_takes_the_certificate() {
        let plain = config_text("10.0.0.1:1883".parse().unwrap(), None);
        assert!(plain.contains("listener 1883 10.0.0.1\n"), "{plain}");
        assert!(plain.contains("persistence false\n"));
        assert!(
            plain.contains("user root\n"),
            "keeps the parent-death signal"
        );
        assert!(plain.contains(&format!("max_packet_size {}\n", MAX_MESSAGE + 4096)));
        assert!(!plain.contains("certfile"));
        let tls = |client_ca| {
            config_text(
                "[fd00::1]:8883".parse().unwrap(),
                Some(ListenerTls {
                    cert: Path::new("/etc/c.pem"),
                    key: Path::new("/etc/k.pem"),
                    client_ca,
                }),
            )
        };
        let server_only = tls(None);
        assert!(
            server_only.contains("listener 8883 fd00::1\n"),
            "{server_only}"
        );
        assert!(server_only.contains("certfile /etc/c.pem\nkeyfile /etc/k.pem\n"));
        assert!(!server_only.contains("require_certificate"));
        let mutual = tls(Some(Path::new("/etc/clients.pem")));
        assert!(
            mutual.contains("cafile /etc/clients.pem\nrequire_certificate true\n"),
            "{mutual}"
        );
    }
}
