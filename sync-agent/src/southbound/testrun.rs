//! `BPF_PROG_RUN` (a.k.a. `BPF_PROG_TEST_RUN`) for XDP programs: timing a
//! program over a frame, and handing a frame to the kernel's receive path on
//! a chosen interface (live frames). aya does not wrap this command; it is one
//! `bpf()` call with the attribute layout of `union bpf_attr`'s `test` member.

use std::{io, os::fd::RawFd};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// Run the frame through the real receive path (kernel >= 5.18).
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct xdp_md` as the kernel reads it from `ctx_in`.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// What a timed run returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimedRun {
    /// The program's return value (an XDP action).
    pub retval: u32,
    /// Average nanoseconds per run, as measured by the kernel.
    pub ns_per_run: u32,
}

fn bpf_test_run(attr: &mut TestRunAttr) -> io::Result<()> {
    // SAFETY: attr is a valid, fully initialised bpf_attr prefix of the size
    // passed; the pointers in it outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr as *mut TestRunAttr,
            core::mem::size_of::<TestRunAttr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Runs the XDP program `prog_fd` over `frame` `repeat` times (no side
/// effects on any interface) and returns the kernel's timing.
pub fn timed(prog_fd: RawFd, frame: &[u8], repeat: u32) -> io::Result<TimedRun> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_size_out: out.len() as u32,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..Default::default()
    };
    bpf_test_run(&mut attr)?;
    Ok(TimedRun {
        retval: attr.retval,
        ns_per_run: attr.duration,
    })
}

/// Hands `frame` to the kernel as if it had arrived on interface `ifindex`
/// (in the caller's network namespace). `prog_fd` must be an XDP program that
/// returns `XDP_PASS` (the agent's `mlag_pass`).
pub fn inject(prog_fd: RawFd, frame: &[u8], ifindex: u32) -> io::Result<()> {
    let ctx = XdpMd {
        data: 0,
        data_end: frame.len() as u32,
        ingress_ifindex: ifindex,
        ..Default::default()
    };
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        ctx_size_in: core::mem::size_of::<XdpMd>() as u32,
        ctx_in: &ctx as *const XdpMd as u64,
        repeat: 1,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        ..Default::default()
    };
    bpf_test_run(&mut attr)
}
