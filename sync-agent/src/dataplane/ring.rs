//! A batch reader of the capture ring buffer (`BPF_MAP_TYPE_RINGBUF`), and
//! the reader's side of the classifier's wakeup rule.
//!
//! A wakeup of the reader is an irq_work, a self-IPI and an epoll wakeup of
//! the reader's thread: microseconds of the producing CPU, paid inside the
//! XDP program's time. The kernel's own rule wakes whenever a record is
//! committed at exactly the published consumer position, which a reader
//! that keeps up hits again and again while it is awake (a batch reader
//! looks caught up between batches). So the classifier submits every record
//! with `BPF_RB_NO_WAKEUP` and wakes the reader only when the reader has
//! said it sleeps: [`RingReader::announce_sleep`] writes a new sleep
//! generation into the `mlag_rb_reader` map (mapped here), fences, and
//! looks at the ring once more; a producer reads the generation after its
//! commit (a full barrier) and wakes the reader once per generation per
//! CPU. Either the reader sees the record or the producer sees the
//! generation, so a lone record is never left waiting; a reader that is
//! awake is never woken. This reader also publishes its position once per
//! batch, not per record as aya's `RingBuf::next` does.
//!
//! The layout is the kernel's (`kernel/bpf/ringbuf.c`): page 0 holds the
//! consumer position (read-write), page 1 the producer position, then the
//! data area, which the kernel offers twice in a row so that a record that
//! wraps is contiguous. This reader maps the data area once and copies the
//! rare record that wraps (one in a ring's worth of bytes) into a buffer of
//! its own: libbpf's and aya's readers map it twice, which counts the same
//! pages twice in the process's resident memory (4 MiB more for the
//! capture ring; the kernel's memory is the same either way). Each record
//! starts with an 8-byte header whose first word is its length plus the
//! busy (not yet committed) and discard bits; the header never wraps
//! (records are 8-aligned, the area a multiple of pages).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence},
};

use aya::maps::MapData;

const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HEADER_BYTES: usize = 8;

/// One `mmap` of the ring buffer's fd, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize, prot: libc::c_int, offset: usize) -> io::Result<Self> {
        // SAFETY: a fresh shared mapping of a ring buffer map fd; the kernel
        // checks the size and protection against the map.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: the mappings are plain shared memory, accessed through atomics
// for the positions, headers and the reader's slot; the reader has one
// owner at a time.
unsafe impl Send for Mapping {}
// SAFETY: as above: what `&RingReader` offers (`is_empty`, `awake`) only
// loads and stores atomics; reading records needs `&mut`.
unsafe impl Sync for Mapping {}

/// The capture ring buffer and the map the reader announces its sleeps
/// in (`mlag_rb_reader`), as [`super::Classifier::load`] hands them over.
pub struct CaptureRing {
    /// The ring buffer (`mlag_captures`), mapped only by [`RingReader`].
    pub ring: MapData,
    /// The one-slot `BPF_F_MMAPABLE` array `mlag_rb_reader`.
    pub reader_slot: MapData,
}

/// The capture ring buffer, read in batches (see the module doc).
pub struct RingReader {
    /// Owns the map fd.
    ring: MapData,
    consumer: Mapping,
    producer: Mapping,
    /// Slot 0 of `mlag_rb_reader` (the map fd stays open in `_slot_map`).
    slot: Mapping,
    _slot_map: MapData,
    page: usize,
    mask: usize,
    /// Consumer position as last published.
    pos: usize,
    /// The last sleep generation announced.
    generation: u64,
    /// A record that wraps, put back together; kept for the next one.
    wrapped: Vec<u8>,
}

impl RingReader {
    /// Maps the ring buffer, whose data area is `byte_size` bytes (the map's
    /// `max_entries`, a power of two), and the reader's slot.
    pub fn new(ring: CaptureRing, byte_size: usize) -> io::Result<Self> {
        let CaptureRing { ring, reader_slot } = ring;
        if !byte_size.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("ring buffer size {byte_size} is not a power of two"),
            ));
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::other("page size"))?;
        let fd = ring.fd().as_fd();
        let consumer = Mapping::new(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = Mapping::new(fd, page + byte_size, libc::PROT_READ, page)?;
        let slot = Mapping::new(
            reader_slot.fd().as_fd(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            0,
        )?;
        let mut reader = Self {
            ring,
            consumer,
            producer,
            slot,
            _slot_map: reader_slot,
            page,
            mask: byte_size - 1,
            pos: 0,
            generation: 0,
            wrapped: Vec::new(),
        };
        reader.pos = reader.consumer_pos().load(Ordering::Acquire);
        reader.awake();
        Ok(reader)
    }

    fn slot(&self) -> &AtomicU64 {
        // SAFETY: the mapping starts with the array's value area, whose
        // slot 0 is the u64 the classifier reads; page-aligned, alive as
        // long as `self`.
        unsafe { &*self.slot.ptr.as_ptr().cast::<AtomicU64>() }
    }

    /// Says the reader is awake: producers stop waking it.
    pub fn awake(&self) {
        self.slot().store(0, Ordering::Relaxed);
    }

    /// Announces that the reader is about to sleep until woken, then looks
    /// at the ring once more. True: nothing committed waits, and the first
    /// record committed from now on wakes the reader (a record still being
    /// written counts as not there: its producer reads the announcement
    /// after committing it). False: records arrived; the announcement is
    /// withdrawn and the reader goes on reading.
    pub fn announce_sleep(&mut self) -> bool {
        self.generation += 1;
        self.slot().store(self.generation, Ordering::Relaxed);
        if self.is_empty() {
            return true;
        }
        self.awake();
        false
    }

    fn consumer_pos(&self) -> &AtomicUsize {
        // SAFETY: page 0 starts with the kernel's `unsigned long
        // consumer_pos`, page-aligned, alive as long as `self`.
        unsafe { &*self.consumer.ptr.as_ptr().cast::<AtomicUsize>() }
    }

    fn producer_pos(&self) -> usize {
        // SAFETY: the producer mapping starts with `producer_pos`.
        unsafe { &*self.producer.ptr.as_ptr().cast::<AtomicUsize>() }.load(Ordering::Acquire)
    }

    /// Header word of the record at data offset `offset` (< byte size).
    fn header(&self, offset: usize) -> u32 {
        // SAFETY: offset is masked, so the 8-aligned header lies inside the
        // first copy of the data area.
        unsafe {
            &*self
                .producer
                .ptr
                .as_ptr()
                .add(self.page + offset)
                .cast::<AtomicU32>()
        }
        .load(Ordering::Acquire)
    }

    /// Hands up to `max` committed records to `each`, in order, then
    /// publishes the new consumer position once. Returns how many records
    /// were handed over (discarded ones are skipped, not counted).
    pub fn read_batch(&mut self, max: usize, mut each: impl FnMut(&[u8])) -> usize {
        let mut pos = self.pos;
        let mut producer = self.producer_pos();
        let mut read = 0;
        while read < max && pos != producer {
            let offset = pos & self.mask;
            let header = self.header(offset);
            if header & BUSY_BIT != 0 {
                break;
            }
            let len = (header & !(BUSY_BIT | DISCARD_BIT)) as usize;
            if len > self.mask {
                // Cannot happen with a kernel-written ring; refuse to read
                // outside the mapping rather than trust it.
                break;
            }
            if header & DISCARD_BIT == 0 {
                let start = (offset + HEADER_BYTES) & self.mask;
                let first = len.min(self.mask + 1 - start);
                // SAFETY: the record is committed (acquire on its header);
                // `start + first` and `len - first` are at most the data
                // area's size, which is mapped after the producer page.
                let area = self.producer.ptr.as_ptr().wrapping_add(self.page);
                let part = |from: usize, bytes: usize| unsafe {
                    std::slice::from_raw_parts(area.add(from), bytes)
                };
                if first == len {
                    each(part(start, len));
                } else {
                    self.wrapped.clear();
                    self.wrapped.extend_from_slice(part(start, first));
                    self.wrapped.extend_from_slice(part(0, len - first));
                    each(&self.wrapped);
                }
                read += 1;
            }
            pos += (HEADER_BYTES + len).next_multiple_of(8);
            if pos == producer {
                producer = self.producer_pos();
            }
        }
        if pos != self.pos {
            self.pos = pos;
            self.consumer_pos().store(pos, Ordering::Release);
        }
        read
    }

    /// True when no committed record waits (a record still being written
    /// counts as none). Only after [`announce_sleep`] does "empty" mean the
    /// reader may sleep.
    ///
    /// [`announce_sleep`]: Self::announce_sleep
    pub fn is_empty(&self) -> bool {
        // Pairs with the producer's commit (an exchange on the header, a
        // full barrier, then a read of the reader's slot): either it sees
        // the sleep announced before this and wakes us, or we see its
        // record here.
        fence(Ordering::SeqCst);
        let producer = self.producer_pos();
        self.pos == producer || self.header(self.pos & self.mask) & BUSY_BIT != 0
    }
}

impl AsRawFd for RingReader {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.fd().as_fd().as_raw_fd()
    }
}
