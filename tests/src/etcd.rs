//! A single-member etcd (Debian package `etcd-server`) run by a test inside
//! a namespace: its data and log in a directory of its own, killed when
//! dropped. The namespace is the test's own, so the standard ports (2379
//! clients, 2380 peers) on its loopback collide with nothing.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::{agent::TempDir, netns::Netns, wait_until};

/// The running etcd.
pub struct Etcd {
    child: Child,
    dir: TempDir,
    /// Its client URL, reachable inside the namespace.
    pub url: String,
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
        )?;
        wait_until(Duration::from_secs(30), "etcd healthy", || {
            match ns.http_get(&format!("{}/health", etcd.url), None) {
                Ok((200, _, body)) if body.contains("true") => Ok(()),
                other => Err(format!("{other:?}\n{}", etcd.log())),
            }
        })?;
        Ok(etcd)
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
        )?;
        wait_until(Duration::from_secs(30), "etcd healthy", || {
            match health(client) {
                Ok(answer) if answer.contains("true") => Ok(()),
                other => Err(format!("{other:?}\n{}", etcd.log())),
            }
        })?;
        Ok(etcd)
    }

    /// Spawns etcd (in `ns`, if given) with its data and log in a new
    /// directory.
    fn spawn(ns: Option<&Netns>, url: String, peer: String) -> anyhow::Result<Self> {
        let dir = TempDir::new("mlag-etcd")?;
        let log = std::fs::File::create(dir.path().join("etcd.log"))?;
        let command = match ns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns.name(), "etcd"]);
                command
            }
            None => Command::new("etcd"),
        };
        let member = Member {
            name: "test",
            data_dir: &dir.path().join("data"),
            url: &url,
            peer: &peer,
            initial_cluster: &format!("test={peer}"),
        };
        let child = member.spawn(command, log)?;
        Ok(Self { child, dir, url })
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
