//! Network namespaces, veth pairs and packet sockets.

use std::{
    ffi::CString,
    fs::File,
    os::fd::AsRawFd as _,
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Runs a command, failing with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

/// A network namespace, deleted (with every process in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `<prefix>-<pid>-<n>` with loopback up.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let name = crate::unique_name(prefix);
        sh("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME args…`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        Ok(String::from_utf8_lossy(&sh("ip", &full)?.stdout).into_owned())
    }

    /// `ip netns exec NAME program args…`.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        Ok(String::from_utf8_lossy(&sh("ip", &full)?.stdout).into_owned())
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered this namespace (sockets it opens
    /// live there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
                    // SAFETY: setns on a valid namespace fd affects only this thread.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        bail!("setns {path}: {}", std::io::Error::last_os_error());
                    }
                    f()
                })
                .join()
                .map_err(|_| anyhow::anyhow!("thread in {path} panicked"))?
        })
    }

    /// Runs `task` on a tokio runtime of its own, on a thread of its own
    /// that has entered this namespace (sockets it opens live there), for
    /// as long as the task runs. The thread outlives this call.
    pub fn spawn_async<F, Fut>(&self, task: F) -> anyhow::Result<std::thread::JoinHandle<()>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = entered_tx.send(Err(format!(
                    "setns {path}: {}",
                    std::io::Error::last_os_error()
                )));
                return;
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = entered_tx.send(Err(format!("tokio runtime: {err}")));
                    return;
                }
            };
            let _ = entered_tx.send(Ok(()));
            runtime.block_on(task());
        });
        entered_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("thread for {} died", self.name))?
            .map_err(anyhow::Error::msg)?;
        Ok(thread)
    }

    /// An HTTP GET from inside the namespace (no proxy, 5 s timeout), with
    /// an `accept` header if given: (status, content type, body).
    pub fn http_get(
        &self,
        url: &str,
        accept: Option<&str>,
    ) -> anyhow::Result<(u16, String, String)> {
        self.run(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(std::time::Duration::from_secs(5))
                    .build()?;
                let mut request = client.get(url);
                if let Some(accept) = accept {
                    request = request.header("accept", accept);
                }
                let response = request.send().await?;
                let status = response.status().as_u16();
                let content_type = response
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                Ok((status, content_type, response.text().await?))
            })
        })
    }

    /// The MAC address of `ifname`.
    pub fn mac(&self, ifname: &str) -> anyhow::Result<[u8; 6]> {
        let json: serde_json::Value =
            serde_json::from_str(&self.ip(&["-j", "link", "show", "dev", ifname])?)?;
        let text = json[0]["address"]
            .as_str()
            .with_context(|| format!("no address for {ifname} in {}", self.name))?;
        parse_mac(text)
    }

    /// The interface index of `ifname`.
    pub fn ifindex(&self, ifname: &str) -> anyhow::Result<u32> {
        let json: serde_json::Value =
            serde_json::from_str(&self.ip(&["-j", "link", "show", "dev", ifname])?)?;
        json[0]["ifindex"]
            .as_u64()
            .map(|i| i as u32)
            .with_context(|| format!("no ifindex for {ifname}"))
    }

    /// Sends raw Ethernet frames out of `ifname`.
    pub fn send_frames(&self, ifname: &str, frames: &[Vec<u8>]) -> anyhow::Result<()> {
        let ifname = ifname.to_string();
        self.run(move || {
            let socket = PacketSocket::open(&ifname)?;
            for frame in frames {
                socket.send(frame)?;
            }
            Ok(())
        })
    }

    /// Opens a packet socket on `ifname` that sees every frame arriving there.
    pub fn listen(&self, ifname: &str) -> anyhow::Result<PacketSocket> {
        let ifname = ifname.to_string();
        self.run(move || PacketSocket::open(&ifname))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: sending a signal has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> anyhow::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        bail!("not a MAC: {text}");
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("not a MAC: {text}"))?;
    }
    Ok(mac)
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Creates a veth pair: `name_a` in `a`, `name_b` in `b`, both up.
pub fn veth(a: &Netns, name_a: &str, b: &Netns, name_b: &str) -> anyhow::Result<()> {
    sh(
        "ip",
        &[
            "link",
            "add",
            name_a,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            name_b,
            "netns",
            b.name(),
        ],
    )?;
    a.ip(&["link", "set", name_a, "up"])?;
    b.ip(&["link", "set", name_b, "up"])?;
    Ok(())
}

/// An AF_PACKET socket bound to one interface (in the namespace it was
/// opened in), for sending and receiving whole frames.
pub struct PacketSocket {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
}

const ETH_P_ALL: u16 = 0x0003;

impl PacketSocket {
    /// Opens and binds to `ifname` in the calling thread's namespace.
    pub fn open(ifname: &str) -> anyhow::Result<Self> {
        use std::os::fd::FromRawFd as _;
        let c_name = CString::new(ifname)?;
        // SAFETY: plain libc calls with valid arguments.
        let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) } as i32;
        if ifindex == 0 {
            bail!("no interface {ifname}");
        }
        let raw =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, ETH_P_ALL.to_be() as i32) };
        if raw < 0 {
            bail!("packet socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh fd we own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let addr = Self::address(ifindex);
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                core::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            bail!(
                "bind packet socket to {ifname}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self { fd, ifindex })
    }

    fn address(ifindex: i32) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data; zero is a valid initial value.
        let mut addr: libc::sockaddr_ll = unsafe { core::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL.to_be();
        addr.sll_ifindex = ifindex;
        addr.sll_halen = 6;
        addr
    }

    /// Sends one frame as is. A full transmit queue (ENOBUFS: a flood
    /// outrunning the receiving side, e.g. generic XDP on a loaded machine)
    /// is waited out for up to two seconds, as packet generators do; the
    /// frame is not dropped.
    pub fn send(&self, frame: &[u8]) -> anyhow::Result<()> {
        let addr = Self::address(self.ifindex);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            // SAFETY: frame and addr are valid for the call.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                    core::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if rc >= 0 {
                return Ok(());
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOBUFS) || Instant::now() > deadline {
                bail!("send {} byte frame: {err}", frame.len());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Receives frames until `stop` says so or `timeout` passes; returns
    /// every frame that arrived (outgoing ones excluded).
    pub fn receive_until(
        &self,
        timeout: Duration,
        mut stop: impl FnMut(&[Vec<u8>]) -> bool,
    ) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline && !stop(&frames) {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let left = deadline
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(100) as i32;
            // SAFETY: pfd is valid for the call.
            if unsafe { libc::poll(&mut pfd, 1, left) } <= 0 {
                continue;
            }
            // SAFETY: sockaddr_ll is plain data.
            let mut from: libc::sockaddr_ll = unsafe { core::mem::zeroed() };
            let mut from_len = core::mem::size_of::<libc::sockaddr_ll>() as u32;
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                    &mut from_len,
                )
            };
            if n > 0 && from.sll_pkttype != libc::PACKET_OUTGOING {
                frames.push(buf[..n as usize].to_vec());
            }
        }
        frames
    }
}
