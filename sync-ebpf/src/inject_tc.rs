//! `mlag_inject_tc`: the second way the agent hands a synced reply to the
//! kernel's receive path, for kernels that refuse `BPF_PROG_RUN` live
//! frames (EPERM on some hardened builds).
//!
//! The agent sends the frame from a packet socket on the loopback device
//! with `skb->mark` = `sync_common::capture::inject_skb_mark(port)`. This
//! program, attached at the loopback's tc egress, redirects exactly those
//! frames to the ingress of the port the mark names (`bpf_redirect` with
//! `BPF_F_INGRESS`), where the stack receives them as if they had arrived
//! there: ARP and ND learning, `arp_accept`, the "other host" rule, all
//! unchanged. Like `mlag_inject` it first leaves the per-CPU mark, so a
//! classifier in generic mode does not capture the injection again: the
//! redirected frame is received from the loopback's transmit path with
//! bottom halves off, on this CPU, before the sender's call returns.
//!
//! Every other frame continues untouched (`TC_ACT_UNSPEC`: the next
//! program, or the device).

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, TC_ACT_UNSPEC},
    helpers::generated::bpf_redirect,
    macros::classifier,
    programs::TcContext,
};
use sync_common::{arp::Frame, capture::inject_target};

use crate::mark_injection;

/// Bounds-checked reads of the socket buffer for the shared parser.
struct TcFrame<'a>(&'a TcContext);

impl Frame for TcFrame<'_> {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.0.load::<[u8; N]>(offset).ok()
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.0.len() as usize
    }
}

#[classifier]
pub fn mlag_inject_tc(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is the program's own; `mark` is a plain
    // readable field of `__sk_buff`.
    let mark = unsafe { (*ctx.skb.skb).mark };
    let Some(port) = inject_target(mark) else {
        return TC_ACT_UNSPEC;
    };
    mark_injection(&TcFrame(&ctx), port);
    // The tag has done its work; the stack sees the frame unmarked.
    ctx.set_mark(0);
    // SAFETY: a plain helper call; an unknown ifindex makes it drop the
    // frame (it was only ever meant for that port).
    unsafe { bpf_redirect(port, BPF_F_INGRESS as u64) as i32 }
}
