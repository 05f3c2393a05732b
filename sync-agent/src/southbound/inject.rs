//! Handing a frame to the kernel's receive path on a chosen interface, as
//! if it had arrived there (SPEC 2.3), by one of two means:
//!
//! - **live frame**: `BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` on the
//!   `mlag_inject` XDP program ([`testrun::inject`]). Synchronous, no
//!   socket, kernel >= 5.18. Some hardened kernels refuse it with EPERM even
//!   to root.
//! - **tc redirect**: the frame is sent from a packet socket bound to the
//!   loopback device with `skb->mark` naming the interface
//!   ([`sync_common::capture::inject_skb_mark`]); `mlag_inject_tc`, attached
//!   at the loopback's tc egress by the dataplane, redirects it to that
//!   interface's ingress. Works on every kernel with tc BPF.
//!
//! Both end in the same receive path (ARP/ND learning, `arp_accept`, the
//! "other host" rule), and both leave the per-CPU mark so a generic-mode
//! classifier does not capture the injection again. [`probe_live_frames`]
//! decides between them at start; the choice is shown in `show peer`.

use std::{
    io,
    mem::{size_of, zeroed},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use serde::{Deserialize, Serialize};
use sync_common::capture::inject_skb_mark;

use super::testrun;

/// The loopback interface: in every network namespace, ifindex 1.
const LOOPBACK_IFINDEX: u32 = 1;

/// Which means hands frames to the receive path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InjectMethod {
    /// `BPF_PROG_RUN` live frames.
    LiveFrame,
    /// A tc redirect from the loopback's egress to the port's ingress.
    TcRedirect,
}

impl InjectMethod {
    /// As `show peer` and the logs print it.
    pub fn name(self) -> &'static str {
        match self {
            Self::LiveFrame => "live-frame",
            Self::TcRedirect => "tc-redirect",
        }
    }
}

/// Hands frames to the receive path by the method chosen at start.
#[derive(Debug)]
pub enum Injector {
    /// An owned fd of the `mlag_inject` XDP program.
    LiveFrame(OwnedFd),
    /// A raw packet socket bound to the loopback device (the dataplane has
    /// attached `mlag_inject_tc` to its egress).
    TcRedirect(OwnedFd),
}

impl Injector {
    /// The live-frame injector over `mlag_inject`'s fd.
    pub fn live_frame(program: OwnedFd) -> Self {
        Self::LiveFrame(program)
    }

    /// The tc-redirect injector: opens its packet socket (needs CAP_NET_RAW).
    /// `mlag_inject_tc` must be attached to the loopback's egress.
    pub fn tc_redirect() -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned at once.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor nobody else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
        let mut address: libc::sockaddr_ll = unsafe { zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        // Protocol 0: the socket sends only, it receives nothing.
        address.sll_ifindex = LOOPBACK_IFINDEX as i32;
        // SAFETY: address is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self::TcRedirect(socket))
    }

    /// Which method this injector uses.
    pub fn method(&self) -> InjectMethod {
        match self {
            Self::LiveFrame(_) => InjectMethod::LiveFrame,
            Self::TcRedirect(_) => InjectMethod::TcRedirect,
        }
    }

    /// Hands `frame` (a whole Ethernet frame) to the receive path of
    /// `ifindex` in this network namespace.
    pub fn inject(&self, frame: &[u8], ifindex: u32) -> io::Result<()> {
        match self {
            Self::LiveFrame(program) => testrun::inject(program.as_raw_fd(), frame, ifindex),
            Self::TcRedirect(socket) => send_marked(socket.as_raw_fd(), frame, ifindex),
        }
    }
}

/// Sends `frame` on the loopback with the mark naming `ifindex`, the mark
/// in the message's own control data so concurrent senders cannot mix
/// marks up.
fn send_marked(socket: RawFd, frame: &[u8], ifindex: u32) -> io::Result<()> {
    let mark = inject_skb_mark(ifindex).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ifindex {ifindex} does not fit the 24 bits of an injection mark"),
        )
    })?;
    // One cmsg carrying a u32, aligned as the kernel reads it.
    #[repr(C)]
    struct MarkControl {
        header: libc::cmsghdr,
        mark: u32,
        _pad: u32,
    }
    // SAFETY: CMSG_LEN is pure arithmetic on a constant.
    let cmsg_len = unsafe { libc::CMSG_LEN(size_of::<u32>() as u32) } as usize;
    // SAFETY: plain data; every field the kernel reads is set below.
    let mut control: MarkControl = unsafe { zeroed() };
    control.header.cmsg_len = cmsg_len;
    control.header.cmsg_level = libc::SOL_SOCKET;
    control.header.cmsg_type = libc::SO_MARK;
    control.mark = mark;
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr() as *mut libc::c_void,
        iov_len: frame.len(),
    };
    // SAFETY: plain data; filled below.
    let mut message: libc::msghdr = unsafe { zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = (&mut control as *mut MarkControl).cast();
    // SAFETY: CMSG_SPACE is pure arithmetic on a constant.
    message.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u32>() as u32) } as usize;
    // SAFETY: message points at live buffers of the sizes given for the
    // whole call; the socket is a valid fd.
    let sent = unsafe { libc::sendmsg(socket, &message, 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != frame.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", frame.len()),
        ));
    }
    Ok(())
}

/// Whether this kernel accepts live frames from `program` (an XDP program
/// returning `XDP_PASS`): hands it one frame on the loopback device that
/// no protocol takes (IEEE local experimental ethertype 0x88b5, addressed
/// to nobody), which the stack drops.
pub fn probe_live_frames(program: RawFd) -> io::Result<()> {
    let mut frame = [0u8; 60];
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    testrun::inject(program, &frame, LOOPBACK_IFINDEX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_named_as_the_config_and_show_peer_spell_them() {
        assert_eq!(InjectMethod::LiveFrame.name(), "live-frame");
        assert_eq!(InjectMethod::TcRedirect.name(), "tc-redirect");
        assert_eq!(
            serde_json::to_string(&InjectMethod::TcRedirect).unwrap(),
            "\"tc-redirect\""
        );
    }

    #[test]
    fn an_ifindex_beyond_24_bits_is_refused_before_anything_is_sent() {
        // An fd that is not a socket: the mark check must fail first.
        let err = send_marked(-1, &[0; 60], 1 << 24).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("ifindex 16777216"));
    }
}
