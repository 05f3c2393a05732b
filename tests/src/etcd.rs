//! A single-member etcd (Debian package `etcd-server`) run by a test inside
//! a namespace: its data and log in a directory of its own, killed when
//! dropped. The namespace is the test's own, so the standard ports (2379
//! clients, 2380 peers) on its loopback collide with nothing. It can be
//! started secured ([`Etcd::start_secure`]): TLS with client certificates
//! from a CA the test generates, and authentication with a user whose
//! role reaches one key prefix.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, ensure};

use crate::{agent::TempDir, netns::Netns, wait_until};

/// The running etcd.
pub struct Etcd {
    child: Child,
    dir: TempDir,
    /// Its client URL, reachable inside the namespace.
    pub url: String,
    /// Its certificates, when it serves TLS.
    pub tls: Option<EtcdTls>,
    /// root's password, when authentication is on.
    root_password: Option<String>,
    /// How it was started, to start it again ([`Etcd::restart`]).
    ns: Option<String>,
    peer: String,
    extra: Vec<String>,
}

/// How [`Etcd::start_secure`] secures etcd.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Serve clients over TLS only (`https://`), with a certificate from a
    /// CA generated for the test, and require a client certificate
    /// signed by it (`--client-cert-auth`).
    pub tls: bool,
    /// Turn authentication on (`auth enable`) with this user besides root.
    pub user: Option<EtcdUser>,
}

/// An etcd user with a role allowing readwrite under one key prefix.
#[derive(Debug, Clone)]
pub struct EtcdUser {
    pub name: String,
    pub password: String,
    /// What its role may read and write (every key starting with it).
    pub prefix: String,
}

/// The PEM files of a TLS etcd: the CA, the member's certificate (for
/// 127.0.0.1) and a client certificate (CN `center`), all signed by the CA.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdTls {
    /// Generates a CA and the two certificates under `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair,
        };
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "mlag-sync test etcd CA");
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::from_params(&ca, &ca_key);
        let tls = Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("etcd.pem"),
            server_key: dir.join("etcd.key"),
            client_cert: dir.join("center.pem"),
            client_key: dir.join("center.key"),
        };
        // etcd's own gateway dials the member with the member's
        // certificate, so it serves as a client certificate too.
        let server_key = KeyPair::generate()?;
        let mut server = CertificateParams::new(vec!["127.0.0.1".to_string()])?;
        server.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let server = server.signed_by(&server_key, &issuer)?;
        let client_key = KeyPair::generate()?;
        let mut client = CertificateParams::new(Vec::<String>::new())?;
        client.distinguished_name.push(DnType::CommonName, "center");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client.signed_by(&client_key, &issuer)?;
        std::fs::write(&tls.ca, ca_cert.pem())?;
        std::fs::write(&tls.server_cert, server.pem())?;
        std::fs::write(&tls.server_key, server_key.serialize_pem())?;
        std::fs::write(&tls.client_cert, client.pem())?;
        std::fs::write(&tls.client_key, client_key.serialize_pem())?;
        Ok(tls)
    }
}

impl Etcd {
    /// Starts etcd in `ns` on 127.0.0.1 and waits until `/health` says so,
    /// failing with its log. A group commit of the center is one etcd
    /// transaction: the limits on those are raised as the README says.
    pub fn start(ns: &Netns) -> anyhow::Result<Self> {
        let etcd = Self::spawn(
            Some(ns),
            "http://127.0.0.1:2379".into(),
            "http://127.0.0.1:2380".into(),
            None,
            &[],
        )?;
        wait_until(Duration::from_secs(30), "etcd healthy", || {
            match ns.http_get(&format!("{}/health", etcd.url), None) {
                Ok((200, _, body)) if body.contains("true") => Ok(()),
                other => Err(format!("{other:?}\n{}", etcd.log())),
            }
        })?;
        Ok(etcd)
    }

    /// Starts etcd in `ns` on 127.0.0.1 secured as `security` says: TLS
    /// (`https://`, client certificates required) and/or authentication
    /// (root and `security.user`, whose role reaches only its prefix),
    /// set up with `etcdctl` before `auth enable`. Waits until it answers.
    pub fn start_secure(ns: &Netns, security: &Security) -> anyhow::Result<Self> {
        let scheme = if security.tls { "https" } else { "http" };
        let dir = TempDir::new("mlag-etcd")?;
        let tls = security
            .tls
            .then(|| EtcdTls::generate(dir.path()))
            .transpose()?;
        let mut extra = Vec::new();
        if let Some(tls) = &tls {
            extra.push(format!("--cert-file={}", tls.server_cert.display()));
            extra.push(format!("--key-file={}", tls.server_key.display()));
            extra.push(format!("--trusted-ca-file={}", tls.ca.display()));
            extra.push("--client-cert-auth".into());
        }
        let mut etcd = Self::spawn(
            Some(ns),
            format!("{scheme}://127.0.0.1:2379"),
            "http://127.0.0.1:2380".into(),
            Some(dir),
            &extra,
        )?;
        etcd.tls = tls;
        etcd.wait_healthy(ns)?;
        if let Some(user) = &security.user {
            let root = format!("root-{}", std::process::id());
            for args in [
                vec!["user", "add", "root", "--new-user-password", &root],
                vec![
                    "user",
                    "add",
                    &user.name,
                    "--new-user-password",
                    &user.password,
                ],
                vec!["role", "add", &user.name],
                vec![
                    "role",
                    "grant-permission",
                    &user.name,
                    "--prefix=true",
                    "readwrite",
                    &user.prefix,
                ],
                vec!["user", "grant-role", &user.name, &user.name],
                vec!["auth", "enable"],
            ] {
                etcd.etcdctl(ns, &args)?;
            }
            etcd.root_password = Some(root);
            // Authentication is on: a request without a user is refused.
            let anonymous = etcd.etcdctl_as(ns, None, &["get", "x"]);
            ensure!(
                anonymous.is_err(),
                "etcd answered a request without a user after `auth enable`: {anonymous:?}"
            );
        }
        Ok(etcd)
    }

    /// Waits until `etcdctl endpoint health` says so (it exits 0 only
    /// then; an anonymous health check passes with authentication on).
    fn wait_healthy(&self, ns: &Netns) -> anyhow::Result<()> {
        wait_until(Duration::from_secs(30), "etcd healthy", || {
            match self.etcdctl_as(ns, None, &["endpoint", "health"]) {
                Ok(_) => Ok(()),
                Err(e) => Err(format!("{e:#}\n{}", self.log())),
            }
        })?;
        Ok(())
    }

    /// SIGKILLs etcd and starts it again on its data, with the same
    /// arguments, in `ns`; waits until it is healthy. What it keeps only in
    /// memory is gone, e.g. the authentication tokens it handed out.
    pub fn restart(&mut self, ns: &Netns) -> anyhow::Result<()> {
        let _ = self.child.kill();
        self.child.wait()?;
        self.child = Self::launch(
            self.dir.path(),
            self.ns.as_deref(),
            &self.url,
            &self.peer,
            &self.extra,
        )?;
        self.wait_healthy(ns)
    }

    /// `etcdctl ARGS` in `ns` against this etcd, with its CA and client
    /// certificate when it serves TLS and as root when authentication is
    /// on: stdout, or the failure with stderr.
    pub fn etcdctl(&self, ns: &Netns, args: &[&str]) -> anyhow::Result<String> {
        let root = self.root_password.as_ref().map(|p| format!("root:{p}"));
        self.etcdctl_as(ns, root.as_deref(), args)
    }

    /// `etcdctl ARGS` as `user` (`name:password`; none: anonymous).
    pub fn etcdctl_as(
        &self,
        ns: &Netns,
        user: Option<&str>,
        args: &[&str],
    ) -> anyhow::Result<String> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns.name(), "etcdctl"])
            .arg(format!("--endpoints={}", self.url))
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=5s")
            .env("ETCDCTL_API", "3");
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cacert={}", tls.ca.display()))
                .arg(format!("--cert={}", tls.client_cert.display()))
                .arg(format!("--key={}", tls.client_key.display()));
        }
        if let Some(user) = user {
            command.arg(format!("--user={user}"));
        }
        let out = command.args(args).output().context("running etcdctl")?;
        ensure!(
            out.status.success(),
            "etcdctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts etcd in this process's own namespace on two free loopback
    /// ports: for `mlag-bench`, whose center runs in-process.
    pub fn start_here() -> anyhow::Result<Self> {
        let free = || -> anyhow::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let (client, peer) = (free()?, free()?);
        let etcd = Self::spawn(
            None,
            format!("http://127.0.0.1:{client}"),
            format!("http://127.0.0.1:{peer}"),
            None,
            &[],
        )?;
        wait_until(Duration::from_secs(30), "etcd healthy", || {
            match health(client) {
                Ok(answer) if answer.contains("true") => Ok(()),
                other => Err(format!("{other:?}\n{}", etcd.log())),
            }
        })?;
        Ok(etcd)
    }

    /// Spawns etcd (in `ns`, if given) with its data and log in `dir` (a
    /// new directory if none), `extra` arguments added.
    fn spawn(
        ns: Option<&Netns>,
        url: String,
        peer: String,
        dir: Option<TempDir>,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let dir = match dir {
            Some(dir) => dir,
            None => TempDir::new("mlag-etcd")?,
        };
        let ns = ns.map(|ns| ns.name().to_string());
        let extra = extra.to_vec();
        let child = Self::launch(dir.path(), ns.as_deref(), &url, &peer, &extra)?;
        Ok(Self {
            child,
            dir,
            url,
            tls: None,
            root_password: None,
            ns,
            peer,
            extra,
        })
    }

    /// Runs etcd (in namespace `ns`, if given) on the data under `dir`,
    /// its output appended to the log there.
    fn launch(
        dir: &Path,
        ns: Option<&str>,
        url: &str,
        peer: &str,
        extra: &[String],
    ) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("etcd.log"))?;
        let mut command = match ns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns, "etcd"]);
                command
            }
            None => Command::new("etcd"),
        };
        command.args(extra);
        let member = Member {
            name: "test",
            data_dir: &dir.join("data"),
            url,
            peer,
            initial_cluster: &format!("test={peer}"),
        };
        member.spawn(command, log)
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

/// One etcd member's identity and addresses.
struct Member<'a> {
    name: &'a str,
    data_dir: &'a std::path::Path,
    url: &'a str,
    peer: &'a str,
    initial_cluster: &'a str,
}

impl Member<'_> {
    /// Runs `command` (etcd, perhaps behind `ip netns exec`) as this
    /// member, output to `log`. A group commit of the center is one etcd
    /// transaction: the limits on those are raised as the README says.
    fn spawn(&self, mut command: Command, log: std::fs::File) -> anyhow::Result<Child> {
        command
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .arg(format!("--listen-client-urls={}", self.url))
            .arg(format!("--advertise-client-urls={}", self.url))
            .arg(format!("--listen-peer-urls={}", self.peer))
            .arg(format!("--initial-advertise-peer-urls={}", self.peer))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .args(["--max-txn-ops=100000", "--max-request-bytes=33554432"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (Debian package etcd-server; `cargo xtask setup`)")
    }
}

/// `GET /health` of an etcd on 127.0.0.1:`port`, the whole answer.
fn health(port: u16) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /health HTTP/1.0\r\nhost: etcd\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An etcd cluster of several members (Debian package `etcd-server`) in
/// one namespace, each with its own data directory and ports on
/// 127.0.0.1 (clients 2379, 2381, ...; peers 2380, 2382, ...). Members can
/// be SIGKILLed and started again on their data; all are killed on drop.
pub struct EtcdCluster {
    ns_name: String,
    dir: TempDir,
    members: Vec<Option<Child>>,
    /// Client URLs, member by member.
    pub urls: Vec<String>,
    peers: Vec<String>,
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one says it is healthy
    /// (a health answer needs a quorum, so the cluster has formed).
    pub fn start(ns: &Netns, size: usize) -> anyhow::Result<Self> {
        let dir = TempDir::new("mlag-etcd-cluster")?;
        let urls: Vec<String> = (0..size)
            .map(|i| format!("http://127.0.0.1:{}", 2379 + 2 * i))
            .collect();
        let peers: Vec<String> = (0..size)
            .map(|i| format!("http://127.0.0.1:{}", 2380 + 2 * i))
            .collect();
        let mut cluster = Self {
            ns_name: ns.name().to_string(),
            dir,
            members: (0..size).map(|_| None).collect(),
            urls,
            peers,
        };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        for i in 0..size {
            cluster.wait_healthy(ns, i)?;
        }
        Ok(cluster)
    }

    fn name(i: usize) -> String {
        format!("m{i}")
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", Self::name(i))))?;
        let initial: Vec<String> = self
            .peers
            .iter()
            .enumerate()
            .map(|(j, peer)| format!("{}={peer}", Self::name(j)))
            .collect();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.ns_name, "etcd"])
            .arg("--initial-cluster-token=mlag-test")
            // Elections quickly, as on a LAN.
            .args(["--heartbeat-interval=50", "--election-timeout=500"]);
        let name = Self::name(i);
        let member = Member {
            name: &name,
            data_dir: &self.dir.path().join(&name),
            url: &self.urls[i],
            peer: &self.peers[i],
            initial_cluster: &initial.join(","),
        };
        self.members[i] = Some(member.spawn(command, log)?);
        Ok(())
    }

    /// Waits until member `i` reports itself healthy.
    pub fn wait_healthy(&self, ns: &Netns, i: usize) -> anyhow::Result<()> {
        let url = &self.urls[i];
        wait_until(
            Duration::from_secs(30),
            &format!("etcd member {i} healthy"),
            || match ns.http_get(&format!("{url}/health"), None) {
                Ok((200, _, body)) if body.contains("true") => Ok(()),
                other => Err(format!("{other:?}\n{}", self.log())),
            },
        )?;
        Ok(())
    }

    /// SIGKILLs member `i` (no goodbye to its peers) and reaps it.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let mut child = self.members[i].take().context("member not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(self.members[i].is_none(), "member {i} is running");
        self.spawn(i)
    }

    /// Every member's output so far.
    pub fn log(&self) -> String {
        (0..self.members.len())
            .map(|i| {
                let text =
                    std::fs::read_to_string(self.dir.path().join(format!("{}.log", Self::name(i))))
                        .unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- member {i} (last lines)\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for child in self.members.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
