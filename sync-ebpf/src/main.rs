//! mlag-sync XDP programs.
//!
//! `mlag_classify` runs on every MLAG member port: it finds ARP replies and
//! ICMPv6 Neighbour Advertisements (`sync_common::nd`), sorts them by
//! destination MAC into peer / own / shared (SPEC 1.2) and copies the ones to
//! sync into a ring buffer for the agent. It never drops or alters a
//! frame: every path returns `XDP_PASS`.
//!
//! `mlag_inject` is what the agent runs with `BPF_PROG_RUN` live frames to
//! hand a reply to the kernel's receive path on a chosen port: it leaves a
//! per-CPU mark naming the reply (`InjectMark`) and returns `XDP_PASS`. A
//! classifier attached in generic mode sees the injected frame again on the
//! same CPU and, finding the mark, does not capture it — without this one
//! misdelivered reply would be synced back and forth between the switches
//! forever (each switch's injection re-captured as class `own`).
//!
//! `mlag_inject_tc` (tc, on the loopback's egress) does the same for
//! kernels that refuse live frames: see `inject_tc`.
//!
//! `mlag_pass` only returns `XDP_PASS`: the benchmark's do-nothing baseline;
//! `mlag_count_only` adds the per-frame counting, the classifier's floor.
//!
//! What a frame costs is the point of this file (issue 18): every frame
//! takes one per-CPU lookup for all its counters, a frame that is neither
//! ARP nor IPv6 nor tagged leaves after its ethertype is read, the link
//! layer of the others is read once, and a reply's class costs an inlined
//! array access (plus one hash lookup only for a MAC the prefilter cannot
//! rule out). A capture wakes the agent
//! only when its reader sleeps ([`wake_reader_if_asleep`]).
#![no_std]
#![no_main]

mod inject_tc;

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, xdp_action::XDP_PASS},
    helpers::generated::{bpf_ktime_get_ns, bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use sync_common::{
    arp::{self, Frame, Parsed},
    capture::{
        CAPTURE_BYTES, CAPTURE_RING_BYTES, CaptureRecord, Class, InjectMark, InjectMark6,
        MAC_CLASS_ENTRIES, MAC_FILTER_WORDS, MacKey, mac_word_filter_bit,
    },
    counters::{self, Block},
    nd, policy,
};

/// Class of every known destination MAC (`Class as u8`): the peer
/// switch's, this switch's and the shared MACs in one table, so sorting a
/// reply costs one lookup whatever its class. The agent resolves a MAC
/// listed twice (shared beats peer beats own) before writing it.
#[map(name = "mlag_mac_class")]
static MAC_CLASS: HashMap<MacKey, u8> = HashMap::with_max_entries(MAC_CLASS_ENTRIES, 0);

/// Prefilter of `mlag_mac_class` (`sync_common::capture::mac_filter_bit`):
/// a clear bit means the MAC is in no table, found with an array access the
/// verifier inlines instead of a hash lookup.
#[map(name = "mlag_mac_filter")]
static MAC_FILTER: Array<u64> = Array::with_max_entries(MAC_FILTER_WORDS, 0);

/// Slot 0: the policy word (see `sync_common::policy`).
#[map(name = "mlag_policy")]
static POLICY: Array<u32> = Array::with_max_entries(1, 0);

/// Per-CPU counters: one [`Block`] per CPU, slots in `sync_common::counters`
/// (and the reader generation this CPU last woke).
#[map(name = "mlag_counters")]
static COUNTERS: PerCpuArray<Block> = PerCpuArray::with_max_entries(1, 0);

/// `mlag_count_only`'s counters: the shape of [`COUNTERS`], apart from it
/// so that the benchmark's floor leaves the agent's counts alone.
#[map(name = "mlag_floor")]
static FLOOR_COUNTERS: PerCpuArray<Block> = PerCpuArray::with_max_entries(1, 0);

/// Replies to sync, as `CaptureRecord`s.
#[map(name = "mlag_captures")]
static CAPTURES: RingBuf = RingBuf::with_byte_size(CAPTURE_RING_BYTES, 0);

/// Slot 0: 0 while the agent's ring reader is awake, else the generation
/// number of its current sleep (it waits to be woken). The reader maps it
/// (`BPF_F_MMAPABLE`) and is its only writer; see [`wake_reader_if_asleep`].
/// Every capture is submitted without a wakeup of its own.
#[map(name = "mlag_rb_reader")]
static RING_READER: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Per CPU: the reply `mlag_inject` is handing to the receive path.
#[map(name = "mlag_injecting")]
static INJECTING: PerCpuArray<InjectMark> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: the Neighbour Advertisement `mlag_inject` is handing to the
/// receive path.
#[map(name = "mlag_injecting6")]
static INJECTING6: PerCpuArray<InjectMark6> = PerCpuArray::with_max_entries(1, 0);

/// Bounds-checked view of the packet for the shared parser.
struct XdpFrame<'a>(&'a XdpContext);

impl Frame for XdpFrame<'_> {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let start = self.0.data();
        let end = self.0.data_end();
        if start + offset + N > end {
            return None;
        }
        // SAFETY: bounds checked against data_end just above; [u8; N] has
        // alignment 1.
        Some(unsafe { *((start + offset) as *const [u8; N]) })
    }

    /// From a helper on purpose: were it `data_end - data`, the compiler
    /// would prove later bounds checks redundant from the ND rules'
    /// comparisons with it and drop them, and the verifier (which does not
    /// follow such relations between scalars) would refuse the program.
    #[inline(always)]
    fn frame_len(&self) -> usize {
        // SAFETY: the context pointer is the program's own.
        unsafe { bpf_xdp_get_buff_len(self.0.ctx) as usize }
    }
}

/// This CPU's counters, found once per frame.
struct Counters(*mut Block);

impl Counters {
    #[inline(always)]
    fn get() -> Option<Self> {
        COUNTERS.get_ptr_mut(0).map(Self)
    }

    /// The reader sleep generation this CPU last woke (see
    /// [`wake_reader_if_asleep`]).
    #[inline(always)]
    fn woken_generation(&self) -> u64 {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        unsafe { (*self.0).woken_generation }
    }

    #[inline(always)]
    fn set_woken_generation(&self, generation: u64) {
        // SAFETY: as above.
        unsafe { (*self.0).woken_generation = generation };
    }

    #[inline(always)]
    fn count(&self, slot: u32) {
        // SAFETY: per-CPU value, no concurrent writer on this CPU; `slot`
        // is one of `sync_common::counters`' constants (< COUNT), so the
        // index is checked at compile time.
        unsafe { (*self.0).slots[slot as usize] += 1 };
    }
}

#[inline(always)]
fn policy_word() -> u32 {
    POLICY.get(0).copied().unwrap_or(policy::DEFAULT)
}

#[xdp]
pub fn mlag_classify(ctx: XdpContext) -> u32 {
    // The lookup cannot fail (index 0 of a one-entry array); were it to,
    // the frame still passes, uncounted and unclassified.
    if let Some(counters) = Counters::get() {
        classify(&ctx, &counters);
    }
    XDP_PASS
}

#[xdp]
pub fn mlag_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// The benchmark's floor for the classifier: a pass that counts the frame
/// the way `mlag_classify` counts every frame (the per-CPU lookup and one
/// slot), so `cargo xtask bench` can show what counting alone costs next
/// to `mlag_pass`. It counts into its own map, never the agent's counters,
/// and is never attached.
#[xdp]
pub fn mlag_count_only(_ctx: XdpContext) -> u32 {
    if let Some(block) = FLOOR_COUNTERS.get_ptr_mut(0) {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        unsafe { (*block).slots[counters::SEEN as usize] += 1 };
    }
    XDP_PASS
}

#[xdp]
pub fn mlag_inject(ctx: XdpContext) -> u32 {
    mark_injection(&XdpFrame(&ctx), ctx.ingress_ifindex() as u32);
    XDP_PASS
}

/// Leaves the per-CPU mark naming the reply (or advertisement) in `frame`,
/// about to be received on `ifindex`.
#[inline(always)]
fn mark_injection<F: Frame>(frame: &F, ifindex: u32) {
    let Ok(link) = arp::link(frame) else {
        return;
    };
    if link.ethertype == nd::ETHERTYPE_IPV6 {
        mark_na_injection(frame, &link, ifindex);
        return;
    }
    let Parsed::ArpReply(reply) = arp::parse_after(frame, &link) else {
        return;
    };
    let Some(addresses) = arp::addresses(frame, reply.arp_offset as usize) else {
        return;
    };
    if let Some(mark) = INJECTING.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            *mark = InjectMark {
                armed_at_ns: bpf_ktime_get_ns(),
                ifindex,
                sender_ip: addresses.sender_ip,
                sender_mac: addresses.sender_mac,
                dst_mac: reply.dst_mac,
            };
        }
    }
}

#[inline(always)]
fn mark_na_injection<F: Frame>(frame: &F, link: &arp::Link, ifindex: u32) {
    let nd::Parsed::Advert(advert) = nd::parse_after(frame, link) else {
        return;
    };
    if let Some(mark) = INJECTING6.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            *mark = InjectMark6 {
                armed_at_ns: bpf_ktime_get_ns(),
                ifindex,
                target: advert.target,
                src_mac: advert.src_mac,
                dst_mac: advert.dst_mac,
            };
        }
    }
}

/// [`is_own_injection`] for an advertisement.
#[inline(always)]
fn is_own_na_injection(ctx: &XdpContext, advert: &nd::Advert) -> bool {
    let Some(mark) = INJECTING6.get_ptr_mut(0) else {
        return false;
    };
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    if unsafe { (*mark).armed_at_ns == 0 || (*mark).ifindex != ifindex } {
        return false;
    }
    // SAFETY: as above.
    unsafe {
        if !(*mark).matches(
            bpf_ktime_get_ns(),
            ifindex,
            &advert.target,
            &advert.src_mac,
            &advert.dst_mac,
        ) {
            return false;
        }
        (*mark).armed_at_ns = 0;
    }
    true
}

/// True (and the mark spent) when this reply is the one `mlag_inject` just
/// handed to the receive path on this CPU. The cheap checks come first, so
/// a reply with no mark armed for its port costs one per-CPU lookup.
#[inline(always)]
fn is_own_injection(ctx: &XdpContext, reply: &arp::ArpReply) -> bool {
    let Some(mark) = INJECTING.get_ptr_mut(0) else {
        return false;
    };
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    if unsafe { (*mark).armed_at_ns == 0 || (*mark).ifindex != ifindex } {
        return false;
    }
    let Some(addresses) = arp::addresses(&XdpFrame(ctx), reply.arp_offset as usize) else {
        return false;
    };
    // SAFETY: as above.
    unsafe {
        if !(*mark).matches(
            bpf_ktime_get_ns(),
            ifindex,
            addresses.sender_ip,
            addresses.sender_mac,
            reply.dst_mac,
        ) {
            return false;
        }
        (*mark).armed_at_ns = 0;
    }
    true
}

/// Class of a destination MAC (as `arp::mac_word` reads it): a VRRP MAC
/// when the policy makes them all shared (no lookup), a MAC the prefilter
/// rules out unmatched (an inlined array access), else one lookup in the
/// class table.
#[inline(always)]
fn class_of(dst_mac: u64, policy: u32) -> Class {
    if policy & policy::VRRP_PREFIX_IS_SHARED != 0 && arp::is_vrrp_word(dst_mac) {
        return Class::Shared;
    }
    let bit = mac_word_filter_bit(dst_mac);
    match MAC_FILTER.get(bit >> 6) {
        Some(word) if word & (1u64 << (bit & 63)) != 0 => {}
        _ => return Class::Unmatched,
    }
    // SAFETY: the value is copied out at once; the agent only ever writes
    // whole one-byte values.
    match unsafe { MAC_CLASS.get(&MacKey::from_word(dst_mac)) } {
        Some(&class) => Class::from_u8(class).unwrap_or(Class::Unmatched),
        None => Class::Unmatched,
    }
}

/// Whether a frame of `class` is synced, counting it in the class slots
/// (`[peer, own, shared, unmatched]`).
#[inline(always)]
fn sync_class(counters: &Counters, class: Class, policy: u32, slots: [u32; 4]) -> bool {
    match class {
        Class::Peer => {
            counters.count(slots[0]);
            true
        }
        Class::Own => {
            counters.count(slots[1]);
            policy & policy::SYNC_OWN != 0
        }
        Class::Shared => {
            counters.count(slots[2]);
            false
        }
        Class::Unmatched => {
            counters.count(slots[3]);
            false
        }
    }
}

#[inline(always)]
fn classify(ctx: &XdpContext, counters: &Counters) {
    counters.count(counters::SEEN);
    let frame = XdpFrame(ctx);
    let link = match arp::link_if_may_hold_reply(&frame) {
        Ok(Some(link)) => link,
        Ok(None) => return,
        Err(_) => {
            counters.count(counters::MALFORMED);
            return;
        }
    };
    if link.ethertype == nd::ETHERTYPE_IPV6 {
        classify_nd(ctx, counters, &link);
        return;
    }
    let reply = match arp::parse_after(&frame, &link) {
        Parsed::Other => return,
        Parsed::Malformed(_) => {
            counters.count(counters::MALFORMED);
            return;
        }
        Parsed::ArpReply(reply) => reply,
    };
    counters.count(counters::ARP_REPLIES);

    let policy = policy_word();
    let class = class_of(arp::mac_word(&reply.dst_mac), policy);
    let sync = sync_class(
        counters,
        class,
        policy,
        [
            counters::PEER,
            counters::OWN,
            counters::SHARED,
            counters::UNMATCHED,
        ],
    );
    debug!(
        ctx,
        "arp reply class {} vlan {}/{}", class as u8, reply.outer_vlan, reply.inner_vlan
    );
    if sync {
        if is_own_injection(ctx, &reply) {
            counters.count(counters::ECHO_SUPPRESSED);
            return;
        }
        capture(
            ctx,
            counters,
            class,
            reply.outer_vlan,
            reply.inner_vlan,
            reply.vlan_count,
            reply.arp_offset,
            counters::CAPTURED,
        );
    }
}

/// The ND half: Neighbour Advertisements sorted like ARP replies, with
/// their own counters.
#[inline(always)]
fn classify_nd(ctx: &XdpContext, counters: &Counters, link: &arp::Link) {
    let advert = match nd::parse_after(&XdpFrame(ctx), link) {
        nd::Parsed::Other => return,
        nd::Parsed::Unfollowed => {
            counters.count(counters::IPV6_UNFOLLOWED);
            return;
        }
        nd::Parsed::Malformed(_) => {
            counters.count(counters::NA_MALFORMED);
            return;
        }
        nd::Parsed::Advert(advert) => advert,
    };
    counters.count(counters::NA_ADVERTS);
    let policy = policy_word();
    let class = class_of(arp::mac_word(&advert.dst_mac), policy);
    let sync = sync_class(
        counters,
        class,
        policy,
        [
            counters::NA_PEER,
            counters::NA_OWN,
            counters::NA_SHARED,
            counters::NA_UNMATCHED,
        ],
    );
    debug!(
        ctx,
        "neighbour advert class {} vlan {}/{}", class as u8, advert.outer_vlan, advert.inner_vlan
    );
    if sync {
        if is_own_na_injection(ctx, &advert) {
            counters.count(counters::NA_ECHO_SUPPRESSED);
            return;
        }
        capture(
            ctx,
            counters,
            class,
            advert.outer_vlan,
            advert.inner_vlan,
            advert.vlan_count,
            advert.na_offset,
            counters::NA_CAPTURED,
        );
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn capture(
    ctx: &XdpContext,
    counters: &Counters,
    class: Class,
    outer_vlan: u16,
    inner_vlan: u16,
    vlan_count: u8,
    payload_offset: u16,
    captured_slot: u32,
) {
    let Some(mut entry) = CAPTURES.reserve::<CaptureRecord>(0) else {
        counters.count(counters::RINGBUF_FULL);
        return;
    };
    let frame_len = ctx.data_end() - ctx.data();
    let mut captured = frame_len;
    if captured > CAPTURE_BYTES {
        captured = CAPTURE_BYTES;
    }
    // The verifier needs a length it can prove is in 1..=CAPTURE_BYTES. A
    // parsed reply is at least 42 bytes (an NA 78), so this mask changes nothing at run
    // time; it only makes the bound visible.
    let load_len = ((captured as u32).wrapping_sub(1) & (CAPTURE_BYTES as u32 - 1)) + 1;
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at a reserved, exclusively owned ring buffer
    // slot of the right size; every field is written before submit.
    unsafe {
        (*record).timestamp_ns = bpf_ktime_get_ns();
        (*record).ifindex = ctx.ingress_ifindex() as u32;
        (*record).frame_len = frame_len as u16;
        (*record).outer_vlan = outer_vlan;
        (*record).inner_vlan = inner_vlan;
        (*record).vlan_count = vlan_count;
        (*record).class = class as u8;
        (*record).arp_offset = payload_offset;
        (*record).captured_len = load_len as u16;
        if bpf_xdp_load_bytes(ctx.ctx, 0, (*record).frame.as_mut_ptr().cast(), load_len) != 0 {
            entry.discard(BPF_RB_NO_WAKEUP as u64);
            counters.count(counters::MALFORMED);
            return;
        }
    }
    // Never the kernel's own wakeup rule (wake whenever the reader's
    // published position is this record's, which a busy reader hits
    // between batches): a wakeup is an irq_work, a self-IPI and an epoll
    // wakeup of the reader's thread, several microseconds on this
    // producer's CPU. The reader is woken only when it sleeps.
    entry.submit(BPF_RB_NO_WAKEUP as u64);
    counters.count(captured_slot);
    wake_reader_if_asleep(counters);
}

/// Wakes the agent's ring reader if it has announced that it sleeps.
///
/// The reader announces each sleep with a new generation number in
/// `mlag_rb_reader` (0 while it is awake). This CPU wakes it once per
/// generation: a capture that finds a generation this CPU has not woken
/// yet notes it in this CPU's block and wakes the reader, with an empty
/// record discarded with `BPF_RB_FORCE_WAKEUP` (its own record is already
/// submitted; discarded records are skipped by the reader). Nothing here
/// writes the shared slot, so no update of it can be lost, and with two
/// CPUs producing at most two wakeups answer one sleep.
///
/// The order makes a lost wakeup impossible: the reader stores its
/// generation, then (full fence) looks at the ring once more before it
/// sleeps; this runs after `submit`, whose exchange on the record header
/// is a full barrier, then reads the generation. Either the reader sees
/// the record, or this sees the generation (store buffering with a fence
/// on both sides). While the reader is awake a capture costs one load of
/// a line the CPUs only read.
#[inline(always)]
fn wake_reader_if_asleep(counters: &Counters) {
    let Some(slot) = RING_READER.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a u64 in an array map value, 8-byte aligned, alive as long
    // as the program. The reader writes it from userspace through its
    // mapping: read once, volatile (the kernel's READ_ONCE; an aligned
    // 8-byte load is atomic, and this target has no atomic load to ask for).
    let asleep = unsafe { core::ptr::read_volatile(slot) };
    if asleep == 0 || counters.woken_generation() == asleep {
        return;
    }
    if let Some(wake) = CAPTURES.reserve::<u64>(0) {
        counters.set_woken_generation(asleep);
        wake.discard(BPF_RB_FORCE_WAKEUP as u64);
    }
    // A full ring has no room for the wakeup; the next capture after the
    // reader made room tries again (this generation is still not woken
    // here), and the reader's timeout bounds the wait meanwhile.
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
