//! A config center on a secured etcd, with real processes (etcd from the
//! Debian package, a real agent), each test in a namespace of its own:
//!
//! - etcd serves TLS only and requires client certificates
//!   (`--client-cert-auth`, a CA the test generates) and has
//!   authentication on, the center's user allowed only under its prefix:
//!   the center stores a config, serves it and runs the rollout engine;
//! - the same after etcd restarted and forgot the center's authentication
//!   token;
//! - a wrong password: the center refuses to start, naming etcd and the
//!   authentication failure;
//! - a CA file that does not exist: the center refuses to start, naming
//!   the field and the file;
//! - no client certificate for an etcd that requires one: the center
//!   refuses to start, pointing to the client certificate.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use mlag_testbed::{
    agent::{Agent, TempDir},
    etcd::{Etcd, EtcdUser, Security},
    netns::Netns,
};

const PORT: u16 = 7480;
const PREFIX: &str = "/secure/center/";
const USER: &str = "center";
const PASSWORD: &str = "correct horse battery staple";

fn secured() -> Security {
    Security {
        tls: true,
        user: Some(EtcdUser {
            name: USER.into(),
            password: PASSWORD.into(),
            prefix: PREFIX.into(),
        }),
    }
}

/// A center on `etcd` with its CA, client certificate and user; the
/// password (`password`) is written to a file only the agent reads.
fn center_config(dir: &Path, etcd: &Etcd, password: &str) -> anyhow::Result<String> {
    let tls = etcd.tls.as_ref().context("a TLS etcd")?;
    let password_file = dir.join("etcd.password");
    std::fs::write(&password_file, format!("{password}\n"))?;
    std::fs::set_permissions(
        &password_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    Ok(format!(
        "instance = \"{{instance}}\"\n\n[rollout.center]\nlisten = \"127.0.0.1:{PORT}\"\ndb_path = \"{}\"\nstore = \"etcd\"\netcd_endpoints = [\"{}\"]\netcd_prefix = \"{PREFIX}\"\netcd_lease_ttl_s = 3\netcd_ca_file = \"{}\"\netcd_cert_file = \"{}\"\netcd_key_file = \"{}\"\netcd_user = \"{USER}\"\netcd_password_file = \"{}\"\n",
        dir.join("unused.redb").display(),
        etcd.url,
        tls.ca.display(),
        tls.client_cert.display(),
        tls.client_key.display(),
        password_file.display(),
    ))
}

/// One HTTP exchange with the center from inside `ns`: (status, body).
fn request(
    ns: &Netns,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let url = format!("http://127.0.0.1:{PORT}{path}");
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    ns.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(20))
                .build()?;
            let mut request = client.request(method, &url);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let answer = request.send().await?;
            let status = answer.status().as_u16();
            let text = answer.text().await?;
            Ok((status, serde_json::from_str(&text).unwrap_or(text.into())))
        })
    })
}

fn put(ns: &Netns, content: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    request(
        ns,
        "PUT",
        "/v1/configs/sec/prod/k",
        Some(serde_json::json!({ "format": "text", "content": content, "author": "test" })),
    )
}

/// Registers device `dev0` (service `s` on sec/prod/k) and long-polls
/// once: the versions it is handed.
fn register_and_poll(ns: &Netns) -> anyhow::Result<Vec<u64>> {
    let services = serde_json::json!([{
        "name": "s",
        "config": {"namespace": "sec", "group": "prod", "name": "k"},
        "depends_on": [],
    }]);
    let (status, body) = request(
        ns,
        "POST",
        "/v1/devices/dev0/register",
        Some(serde_json::json!({ "services": services })),
    )?;
    ensure!(status == 200, "register: {status} {body}");
    let (status, body) = request(ns, "GET", "/v1/devices/dev0/watch?timeout_ms=5000", None)?;
    ensure!(status == 200, "poll: {status} {body}");
    Ok(body["assignments"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a["version"].as_u64())
        .collect())
}

#[test]
fn a_center_on_etcd_with_tls_client_certificates_and_a_user_stores_and_serves_configs()
-> anyhow::Result<()> {
    let ns = Netns::new("ces")?;
    let etcd = Etcd::start_secure(&ns, &secured())?;
    let dir = TempDir::new("mlag-center-etcd-secure")?;
    let center = Agent::start(&ns, &center_config(dir.path(), &etcd, PASSWORD)?)?;
    let run = || -> anyhow::Result<()> {
        let (status, record) = put(&ns, "one")?;
        ensure!(status == 200, "put: {status} {record}");
        let (status, record) = put(&ns, "two")?;
        ensure!(
            status == 200 && record["version"] == 2,
            "put: {status} {record}"
        );
        let (status, got) = request(&ns, "GET", "/v1/configs/sec/prod/k", None)?;
        ensure!(
            status == 200 && got["content"] == "two",
            "get: {status} {got}"
        );
        ensure!(register_and_poll(&ns)? == [2], "the device is handed v2");
        // The lease, the election and the lock work as this user too.
        mlag_testbed::wait_until(
            Duration::from_secs(10),
            "the center runs the engine",
            || match request(&ns, "GET", "/v1/stats", None) {
                Ok((200, stats)) if stats["runs_engine"] == true => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )?;
        // It is really in that etcd, under the prefix (read as root).
        let stored = etcd.etcdctl(&ns, &["get", &format!("{PREFIX}current/sec/prod/k")])?;
        ensure!(stored.lines().nth(1) == Some("2"), "in etcd: {stored:?}");
        Ok(())
    };
    run().with_context(|| format!("center log:\n{}\netcd:\n{}", center.log_text(), etcd.log()))
}

#[test]
fn a_center_keeps_working_after_etcd_restarts_and_forgets_its_authentication_token()
-> anyhow::Result<()> {
    let ns = Netns::new("cet")?;
    let mut etcd = Etcd::start_secure(&ns, &secured())?;
    let dir = TempDir::new("mlag-center-etcd-token")?;
    let center = Agent::start(&ns, &center_config(dir.path(), &etcd, PASSWORD)?)?;
    let mut run = || -> anyhow::Result<()> {
        let (status, record) = put(&ns, "one")?;
        ensure!(status == 200, "put: {status} {record}");
        // etcd's simple tokens live in its memory (and expire after
        // --auth-token-ttl unused): a restarted member, or another member
        // the center moves to, does not know the center's token.
        etcd.restart(&ns)?;
        let (version, refused) = put_until_stored(&ns, "two", Duration::from_secs(30))?;
        ensure!(version == 2, "version {version}");
        eprintln!("after etcd restarted, the next write stored ({refused} refused first)");
        ensure!(register_and_poll(&ns)? == [2], "the device is handed v2");
        Ok(())
    };
    run().with_context(|| format!("center log:\n{}\netcd:\n{}", center.log_text(), etcd.log()))
}

/// Puts until one is stored (within `within`, while etcd comes back):
/// the version and how many attempts were refused first.
fn put_until_stored(ns: &Netns, content: &str, within: Duration) -> anyhow::Result<(u64, usize)> {
    let deadline = std::time::Instant::now() + within;
    let mut refused = 0;
    loop {
        match put(ns, content) {
            Ok((200, record)) => {
                return Ok((record["version"].as_u64().context("version")?, refused));
            }
            other if std::time::Instant::now() > deadline => {
                anyhow::bail!("put {content:?} not stored: {other:?}")
            }
            _ => refused += 1,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_wrong_etcd_password_stops_the_center_naming_etcd_and_the_authentication_failure()
-> anyhow::Result<()> {
    let ns = Netns::new("cew")?;
    let etcd = Etcd::start_secure(&ns, &secured())?;
    let dir = TempDir::new("mlag-center-etcd-password")?;
    let mut center = Agent::spawn(&ns, &center_config(dir.path(), &etcd, "not the password")?)?;
    let status = center.wait_exit(Duration::from_secs(30))?;
    let log = center.log_text();
    ensure!(
        !status.success(),
        "the center ran with a wrong password:\n{log}"
    );
    ensure!(
        log.contains("etcd https://127.0.0.1:2379")
            && log.contains("authentication failed")
            && log.contains("etcd_password_file"),
        "the refusal names neither etcd nor the authentication failure:\n{log}"
    );
    ensure!(
        !log.contains("not the password"),
        "the password is in the log:\n{log}"
    );
    eprintln!(
        "refused: {}",
        log.trim_end().lines().last().unwrap_or_default()
    );
    Ok(())
}

#[test]
fn a_missing_etcd_ca_file_stops_the_center_naming_the_field_and_the_file() -> anyhow::Result<()> {
    let ns = Netns::new("cec")?;
    let dir = TempDir::new("mlag-center-etcd-ca")?;
    let missing = dir.path().join("no-such-ca.pem");
    let config = format!(
        "instance = \"{{instance}}\"\n\n[rollout.center]\nlisten = \"127.0.0.1:{PORT}\"\ndb_path = \"{}\"\nstore = \"etcd\"\netcd_endpoints = [\"https://127.0.0.1:2379\"]\netcd_ca_file = \"{}\"\n",
        dir.path().join("unused.redb").display(),
        missing.display()
    );
    let mut center = Agent::spawn(&ns, &config)?;
    let status = center.wait_exit(Duration::from_secs(20))?;
    let log = center.log_text();
    ensure!(
        !status.success(),
        "the center ran without its CA file:\n{log}"
    );
    ensure!(
        log.contains("rollout.center.etcd_ca_file") && log.contains(&missing.display().to_string()),
        "the refusal does not name the field and the file:\n{log}"
    );
    eprintln!(
        "refused: {}",
        log.trim_end().lines().last().unwrap_or_default()
    );
    Ok(())
}

#[test]
fn a_center_without_the_client_certificate_etcd_requires_is_refused_pointing_to_it()
-> anyhow::Result<()> {
    let ns = Netns::new("cen")?;
    let etcd = Etcd::start_secure(
        &ns,
        &Security {
            tls: true,
            user: None,
        },
    )?;
    let dir = TempDir::new("mlag-center-etcd-nocert")?;
    let tls = etcd.tls.as_ref().context("a TLS etcd")?;
    let config = format!(
        "instance = \"{{instance}}\"\n\n[rollout.center]\nlisten = \"127.0.0.1:{PORT}\"\ndb_path = \"{}\"\nstore = \"etcd\"\netcd_endpoints = [\"{}\"]\netcd_ca_file = \"{}\"\n",
        dir.path().join("unused.redb").display(),
        etcd.url,
        tls.ca.display(),
    );
    let mut center = Agent::spawn(&ns, &config)?;
    let status = center.wait_exit(Duration::from_secs(40))?;
    let log = center.log_text();
    ensure!(
        !status.success(),
        "the center ran without a client certificate:\n{log}"
    );
    eprintln!(
        "refused: {}",
        log.trim_end().lines().last().unwrap_or_default()
    );
    ensure!(
        log.contains("etcd https://127.0.0.1:2379")
            && log.contains("client certificate")
            && log.contains("etcd_cert_file"),
        "the refusal does not name etcd and TLS:\n{log}"
    );
    Ok(())
}
