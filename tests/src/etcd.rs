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
        let dir = TempDir::new("mlag-etcd")?;
        let log = std::fs::File::create(dir.path().join("etcd.log"))?;
        let (url, peer) = ("http://127.0.0.1:2379", "http://127.0.0.1:2380");
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "etcd", "--name=test"])
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .args(["--max-txn-ops=100000", "--max-request-bytes=33554432"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (Debian package etcd-server; `cargo xtask setup`)")?;
        let etcd = Self {
            child,
            dir,
            url: url.to_string(),
        };
        wait_until(Duration::from_secs(30), "etcd healthy", || {
            match ns.http_get(&format!("{url}/health"), None) {
                Ok((200, _, body)) if body.contains("true") => Ok(()),
                other => Err(format!("{other:?}\n{}", etcd.log())),
            }
        })?;
        Ok(etcd)
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
