//! SPEC 8.3 with real processes: a config center reachable beyond loopback
//! (10.77.0.1 on a veth, its own namespace) serves HTTPS with tokens minted
//! by `sync-agent config token new`; operators use curl and the CLI, a
//! device agent in another namespace uses its `token_file` and `ca_file`.

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use anyhow::{Context as _, bail};
use mlag_testbed::{
    agent::{Agent, TempDir, agent_binary},
    netns::{self, Netns},
    wait_until,
};

const WAIT: Duration = Duration::from_secs(20);
const CENTER_IP: &str = "10.77.0.1";
const PORT: u16 = 7480;
const KEY: &str = "app/prod/common";

/// The center's namespace and the clients' one, joined by a veth.
struct Bed {
    center_ns: Netns,
    client_ns: Netns,
    dir: TempDir,
    ca: PathBuf,
    /// name -> token secret, as minted by the CLI.
    tokens: Vec<(String, String)>,
    /// `[[rollout.center.tokens]]` entries printed by the CLI.
    entries: String,
}

impl Bed {
    fn new() -> anyhow::Result<Self> {
        let center_ns = Netns::new("cau")?;
        let client_ns = Netns::new("caud")?;
        netns::veth(&center_ns, "c0", &client_ns, "d0")?;
        center_ns.ip(&["addr", "add", &format!("{CENTER_IP}/24"), "dev", "c0"])?;
        client_ns.ip(&["addr", "add", "10.77.0.2/24", "dev", "d0"])?;
        let dir = TempDir::new("mlag-center-auth")?;
        let ca = write_pki(dir.path())?;
        Ok(Self {
            center_ns,
            client_ns,
            dir,
            ca,
            tokens: Vec::new(),
            entries: String::new(),
        })
    }

    fn url(&self) -> String {
        format!("https://{CENTER_IP}:{PORT}")
    }

    /// `sync-agent -j config token new ARGS`: keeps the secret and the
    /// config entry it prints.
    fn mint(&mut self, name: &str, args: &[&str]) -> anyhow::Result<()> {
        let out = netns::sh(
            agent_binary()?.to_str().context("path")?,
            &[&["-j", "config", "token", "new", "--name", name], args].concat(),
        )?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let token = v["token"].as_str().context("token")?.to_string();
        let sha = v["sha256"].as_str().context("sha256")?;
        let config = v["config"].as_str().context("config")?;
        assert!(config.contains(sha) && !config.contains(&token), "{config}");
        self.tokens.push((name.to_string(), token));
        self.entries.push_str(config);
        Ok(())
    }

    fn token(&self, name: &str) -> String {
        self.tokens
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("no token {name}"))
    }

    /// The center with TLS and every minted token, on 10.77.0.1.
    fn center(&self) -> anyhow::Result<Agent> {
        Agent::start(
            &self.center_ns,
            &format!(
                "instance = \"{{instance}}\"\n\n[rollout.center]\nlisten = \"{CENTER_IP}:{PORT}\"\ndb_path = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\n{}",
                self.dir.path().join("center.redb").display(),
                self.dir.path().join("center.pem").display(),
                self.dir.path().join("center.key").display(),
                self.entries
            ),
        )
    }

    /// `sync-agent config ARGS -j` in the clients' namespace, with `token`
    /// in MLAG_SYNC_TOKEN (never on the command line) and the CA file.
    fn cli(&self, token: Option<&str>, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = self.client_ns.command(&agent_binary()?);
        cmd.arg("config")
            .args(args)
            .args(["--center", &self.url(), "--ca-file"])
            .arg(&self.ca)
            .arg("-j")
            .env_remove("MLAG_SYNC_TOKEN");
        if let Some(token) = token {
            cmd.env("MLAG_SYNC_TOKEN", token);
        }
        Ok(cmd.output()?)
    }

    /// The CLI's JSON answer; fails with its stderr if refused.
    fn cli_ok(&self, token: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = self.cli(Some(token), args)?;
        if !out.status.success() {
            bail!(
                "config {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// curl in the clients' namespace: (status, JSON body, headers).
    fn curl(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, serde_json::Value, String)> {
        let headers = self.dir.path().join("headers.txt");
        let url = format!("{}{path}", self.url());
        let ca = self.ca.display().to_string();
        let headers_arg = headers.display().to_string();
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec![
            "-sS",
            "--cacert",
            &ca,
            "-X",
            method,
            "-D",
            &headers_arg,
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ];
        if let Some(auth) = &auth {
            args.extend(["-H", auth]);
        }
        if let Some(body) = body {
            args.extend(["-H", "Content-Type: application/json", "--data", body]);
        }
        args.push(&url);
        let out = self.client_ns.exec("curl", &args)?;
        let (body, code) = out.rsplit_once('\n').context("curl output")?;
        let value = if body.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(body).with_context(|| format!("curl {path}: {body}"))?
        };
        Ok((
            code.trim().parse()?,
            value,
            std::fs::read_to_string(headers)?,
        ))
    }

    fn refused(&self) -> anyhow::Result<serde_json::Value> {
        Ok(self.cli_ok(&self.token("reader"), &["stats"])?["refused"].clone())
    }

    /// A device agent (no dataplane) in the clients' namespace, following
    /// the center over HTTPS with `token_name`'s token in its token_file.
    fn device(&self, device: &str, token_name: &str) -> anyhow::Result<(Agent, PathBuf)> {
        let d = self.dir.path().join(device);
        std::fs::create_dir_all(&d)?;
        let token_file = d.join("token");
        std::fs::write(&token_file, format!("{}\n", self.token(token_name)))?;
        let conf = d.join("app.conf");
        let agent = Agent::start(
            &self.client_ns,
            &format!(
                "instance = \"{{instance}}\"\n\n[rollout.device]\ncenter = \"{}\"\ndevice = \"{device}\"\nbackup_dir = \"{}\"\ntoken_file = \"{}\"\nca_file = \"{}\"\nwatch_timeout_ms = 2000\nservices = [ {{ name = \"app\", config = \"{KEY}\", path = \"{}\" }} ]\n",
                self.url(),
                d.join("backup").display(),
                token_file.display(),
                self.ca.display(),
                conf.display()
            ),
        )?;
        Ok((agent, conf))
    }
}

/// A CA and a certificate for 10.77.0.1 signed by it: writes ca.pem,
/// center.pem and center.key into `dir`, returns the CA's path.
fn write_pki(dir: &Path) -> anyhow::Result<PathBuf> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "mlag-sync test CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let key = rcgen::KeyPair::generate()?;
    let leaf =
        rcgen::CertificateParams::new(vec![CENTER_IP.to_string()])?.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    std::fs::write(dir.join("center.pem"), leaf.pem())?;
    std::fs::write(dir.join("center.key"), key.serialize_pem())?;
    Ok(dir.join("ca.pem"))
}

fn counter(refused: &serde_json::Value, reason: &str) -> u64 {
    refused[reason].as_u64().unwrap_or(0)
}

#[test]
fn a_center_beyond_loopback_without_tokens_and_tls_starts_only_when_insecure() -> anyhow::Result<()>
{
    let bed = Bed::new()?;
    let config = |extra: &str| {
        format!(
            "instance = \"{{instance}}\"\n\n[rollout.center]\nlisten = \"{CENTER_IP}:{PORT}\"\ndb_path = \"{}\"\n{extra}",
            bed.dir.path().join("open.redb").display()
        )
    };
    let mut refused = Agent::spawn(&bed.center_ns, &config(""))?;
    let status = refused.wait_exit(WAIT)?;
    assert!(!status.success());
    let log = refused.log_text();
    assert!(
        log.contains("rollout.center.listen") && log.contains("without tokens and TLS"),
        "{log}"
    );
    assert!(!bed.dir.path().join("open.redb").exists(), "nothing opened");

    let open = Agent::start(&bed.center_ns, &config("insecure = true\n"))?;
    let log = open.log_text();
    assert!(
        log.contains("WARN") && log.contains("INSECURE config center"),
        "{log}"
    );
    // It does serve, in plain HTTP, to anyone.
    let out = bed.client_ns.exec(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{CENTER_IP}:{PORT}/v1/stats"),
        ],
    )?;
    assert_eq!(out.trim(), "200");
    Ok(())
}

#[test]
fn tokens_decide_who_may_read_publish_and_act_as_a_device_over_https() -> anyhow::Result<()> {
    let mut bed = Bed::new()?;
    bed.mint("reader", &["--role", "app:read"])?;
    bed.mint("publisher", &["--role", "app:publish"])?;
    bed.mint("admin", &["--role", "*:admin"])?;
    bed.mint("sw1-token", &["--device", "sw1"])?;
    let _center = bed.center()?;
    let (reader, publisher, sw1) = (
        bed.token("reader"),
        bed.token("publisher"),
        bed.token("sw1-token"),
    );
    let k = format!("/v1/configs/{KEY}");

    // Anonymous: 401 with a JSON reason and a Bearer challenge.
    let (code, body, headers) = bed.curl(None, "GET", &k, None)?;
    assert_eq!(code, 401, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("authentication required"),
        "{body}"
    );
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{headers}"
    );
    let (code, body, _) = bed.curl(Some("mlag_guess"), "GET", &k, None)?;
    assert_eq!(code, 401, "{body}");
    let out = bed.cli(None, &["list"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );

    // Reader cannot publish (403, nothing stored); publisher can, and is
    // the author whatever the body claims.
    let out = bed.cli(
        Some(&reader),
        &["put", KEY, "--format", "text", "--content", "v1"],
    )?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("403") && stderr.contains("lacks role app:publish"),
        "{stderr}"
    );
    let (code, _, _) = bed.curl(Some(&reader), "GET", &k, None)?;
    assert_eq!(code, 404, "nothing was stored");
    let put = bed.cli_ok(
        &publisher,
        &["put", KEY, "--format", "text", "--content", "v1"],
    )?;
    assert_eq!(put["version"], 1);
    let (code, body, _) = bed.curl(
        Some(&publisher),
        "PUT",
        &k,
        Some(r#"{"format": "text", "content": "v2", "author": "mallory"}"#),
    )?;
    assert_eq!((code, body["version"].as_u64()), (200, Some(2)), "{body}");
    let got = bed.cli_ok(&reader, &["get", KEY])?;
    assert_eq!(got["content"], "v2");
    let history = bed.cli_ok(&reader, &["history", KEY])?;
    let authors: Vec<&str> = history
        .as_array()
        .context("history")?
        .iter()
        .filter_map(|r| r["author"].as_str())
        .collect();
    assert_eq!(authors, ["publisher", "publisher"], "{history}");

    // The device token: register, poll and acknowledge as sw1 only.
    let register = r#"{"services": [{"name": "app", "config": {"namespace": "app", "group": "prod", "name": "common"}}]}"#;
    let before = bed.refused()?;
    let (code, body, _) = bed.curl(
        Some(&sw1),
        "POST",
        "/v1/devices/sw2/register",
        Some(register),
    )?;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("cannot act for device \"sw2\""),
        "{body}"
    );
    let (code, body, _) = bed.curl(
        Some(&sw1),
        "POST",
        "/v1/devices/sw1/register",
        Some(register),
    )?;
    assert_eq!(code, 200, "{body}");
    let (code, _, _) = bed.curl(
        Some(&publisher),
        "PUT",
        &k,
        Some(r#"{"format": "text", "content": "v3"}"#),
    )?;
    assert_eq!(code, 200);
    let (code, watch, _) = bed.curl(
        Some(&sw1),
        "GET",
        "/v1/devices/sw1/watch?timeout_ms=0",
        None,
    )?;
    assert_eq!(code, 200, "{watch}");
    let a = &watch["assignments"][0];
    assert_eq!(a["version"], 3, "{watch}");
    let (code, _, _) = bed.curl(
        Some(&sw1),
        "GET",
        "/v1/devices/sw2/watch?timeout_ms=0",
        None,
    )?;
    assert_eq!(code, 403);
    let ack = format!(
        r#"{{"rollout_id": {}, "service": "app", "version": 3, "ok": true}}"#,
        a["rollout_id"]
    );
    let (code, _, _) = bed.curl(Some(&sw1), "POST", "/v1/devices/sw2/ack", Some(&ack))?;
    assert_eq!(code, 403, "an ack for another device");
    let (code, _, _) = bed.curl(
        Some(&sw1),
        "PUT",
        &k,
        Some(r#"{"format": "text", "content": "x"}"#),
    )?;
    assert_eq!(code, 403, "a device token does not publish");
    let (code, body, _) = bed.curl(Some(&sw1), "POST", "/v1/devices/sw1/ack", Some(&ack))?;
    assert_eq!(code, 200, "{body}");
    let rollout = bed.cli_ok(&reader, &["rollouts"])?;
    assert_eq!(rollout[0]["state"], "done", "{rollout}");

    // Rollout and device administration need admin.
    let out = bed.cli(Some(&publisher), &["remove-device", "sw1"])?;
    assert!(!out.status.success(), "{out:?}");
    bed.cli_ok(&bed.token("admin"), &["remove-device", "sw1"])?;

    // Every refusal was counted by its reason.
    let after = bed.refused()?;
    assert_eq!(
        counter(&after, "wrong_device") - counter(&before, "wrong_device"),
        3,
        "{before} -> {after}"
    );
    assert_eq!(
        counter(&after, "forbidden") - counter(&before, "forbidden"),
        2,
        "{before} -> {after}"
    );
    assert_eq!(counter(&before, "unauthenticated"), 2, "{before}");
    assert_eq!(counter(&before, "bad_token"), 1, "{before}");
    assert_eq!(counter(&before, "forbidden"), 1, "{before}");
    Ok(())
}

#[test]
fn a_device_with_token_file_and_ca_file_gets_its_config_over_https() -> anyhow::Result<()> {
    let mut bed = Bed::new()?;
    bed.mint("publisher", &["--role", "app:publish"])?;
    bed.mint("reader", &["--role", "*:read"])?;
    bed.mint("sw1-token", &["--device", "sw1"])?;
    let _center = bed.center()?;
    let publisher = bed.token("publisher");
    bed.cli_ok(
        &publisher,
        &["put", KEY, "--format", "text", "--content", "server v1\n"],
    )?;

    let (device, conf) = bed.device("sw1", "sw1-token")?;
    wait_until(WAIT, "sw1 to write v1", || {
        let now = std::fs::read_to_string(&conf).unwrap_or_default();
        if now == "server v1\n" {
            Ok(())
        } else {
            Err(now)
        }
    })?;
    // A change reaches it too (long poll over HTTPS), and is confirmed.
    bed.cli_ok(
        &publisher,
        &["put", KEY, "--format", "text", "--content", "server v2\n"],
    )?;
    wait_until(WAIT, "sw1 to write v2", || {
        let now = std::fs::read_to_string(&conf).unwrap_or_default();
        if now == "server v2\n" {
            Ok(())
        } else {
            Err(now)
        }
    })?;
    wait_until(WAIT, "sw1 to confirm v2", || {
        let listeners = bed
            .cli_ok(&bed.token("reader"), &["listeners", KEY])
            .map_err(|e| e.to_string())?;
        (listeners[0]["version"] == 2)
            .then_some(())
            .ok_or(listeners.to_string())
    })?;
    let report = device.query(&["show", "rollout"])?;
    assert_eq!(report["device"]["connected"], true, "{report}");

    // Another device presenting sw1's token is refused and counted; it is
    // never registered and writes nothing.
    let before = counter(&bed.refused()?, "wrong_device");
    let (_impostor, impostor_conf) = bed.device("sw2", "sw1-token")?;
    wait_until(WAIT, "sw2's attempts refused as wrong_device", || {
        let refused = bed.refused().map_err(|e| e.to_string())?;
        let now = counter(&refused, "wrong_device");
        (now > before).then_some(()).ok_or(refused.to_string())
    })?;
    let devices = bed.cli_ok(&bed.token("reader"), &["devices"])?;
    let names: Vec<&str> = devices
        .as_array()
        .context("devices")?
        .iter()
        .filter_map(|d| d["device"].as_str())
        .collect();
    assert_eq!(names, ["sw1"], "{devices}");
    assert!(!impostor_conf.exists());
    Ok(())
}
