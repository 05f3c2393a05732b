//! Process-wide memory settings of the agent binary, and of the benchmark
//! binary that hosts its parts (so that the figures there are the agent's).

/// Turns transparent huge pages off for this process and the processes it
/// starts. mimalloc advises them (`MADV_HUGEPAGE`) on its arenas, so the
/// first touch of fresh heap zeroes a whole 2 MB page inside whatever
/// request touched it. Seen with perf under `xtask bench center` on a
/// 2-core VM: a put releasing a version to 10,000 devices spent most of its
/// time in `clear_page_erms` under `do_huge_pmd_anonymous_page`, and its
/// first long-poll answer came some 110 ms later than with 4 KB pages
/// (which fault in only what is touched). Latency-bound servers (Redis,
/// MongoDB) turn them off for the same reason; the cost is a few more TLB
/// misses.
pub fn no_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and changes only
    // this process's memory flags.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// mimalloc's `mi_option_purge_delay` (`enum mi_option_e` in mimalloc.h,
/// the same index in v2 and v3; libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc hand freed pages back to the OS at once instead of after
/// its default second (mimalloc v3's `options.c`). A fabric server's broker frees bursts of buffers (a
/// config round's 1,000 deliveries, a throughput burst) while new bursts
/// keep allocating; with the delay, freed pages of one burst were still
/// resident when the next grew the heap, and `xtask bench fabric` measured
/// the primary at 137 MiB resident after its rounds instead of 107 MiB.
/// Costs one `madvise` per freed page run.
pub fn return_freed_memory_at_once() {
    // SAFETY: mi_option_set only stores an integer in mimalloc's option
    // table; any value is valid for this option.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

/// Allocations from this size up have their whole pages handed back to
/// the kernel when they are made (see [`Allocator`]).
pub const UNTOUCHED_FROM: usize = 16 * 1024;

const OS_PAGE: usize = 4096;

/// The agent's allocator: mimalloc, except that a fresh allocation of
/// [`UNTOUCHED_FROM`] bytes or more starts out not resident.
///
/// mimalloc keeps its free list inside the free blocks, so handing out a
/// block writes the block's first word, and that touches (makes resident)
/// the block's first 4 KiB page whether or not the caller ever writes it.
/// rumqttd 0.20 allocates per connection several fixed queues of 20-80 KiB
/// (`VecDeque::with_capacity`), two of which a TCP connection never uses
/// (a QoS 2 log and a cache of the in-process link); at 1,000 members the
/// free-list word alone kept those pages resident. mimalloc aligns blocks
/// of a multiple of 4 KiB (every size class from 16 KiB up) to the page,
/// so `MADV_DONTNEED` on the block's whole pages right after the
/// allocation returns them: the block reads as zeros (the caller must not
/// assume any content anyway) and a page comes back when first written.
/// Nothing of mimalloc's lives inside an allocated block, so this is
/// invisible to it. A block mimalloc reuses comes back with whatever its
/// last owner made resident; that goes too, the new owner pays only for
/// what it writes. Cost: one `madvise` per large allocation (a fabric
/// server with 1,000 members makes a few hundred a second at most), and a
/// page fault more for a block whose first page the caller does use.
/// Resizing (`realloc`) is left to mimalloc: it copies into the new block.
/// Measured with `mlag-bench fabric embedded` (README, fabric at scale):
/// the primary's peak went from 110-112 to 105-107 MiB.
#[derive(Debug, Default)]
pub struct Allocator;

// SAFETY: every call is forwarded to mimalloc with its own arguments;
// `alloc` only discards the contents of pages that lie wholly inside the
// block mimalloc just returned for this layout, which the caller has not
// seen yet and which `GlobalAlloc::alloc` does not promise to initialise.
unsafe impl std::alloc::GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let block = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if layout.size() >= UNTOUCHED_FROM && !block.is_null() {
            let start = (block as usize).next_multiple_of(OS_PAGE);
            let end = (block as usize + layout.size()) & !(OS_PAGE - 1);
            if end > start {
                // SAFETY: [start, end) is page-aligned and inside the block
                // of `layout.size()` bytes mimalloc gave out; nobody else
                // holds it. A failure leaves the pages as they were.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
                }
            }
        }
        block
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded; `ptr` came from this allocator, i.e. mimalloc.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded; `ptr` came from this allocator, i.e. mimalloc.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_is_the_option_set_to_zero() {
        // SAFETY: reading and writing mimalloc's option table.
        unsafe {
            // The default of mimalloc v3's options.c (1,000 ms) proves the
            // index names the purge delay; nothing else in the tests sets it.
            assert_eq!(
                libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY),
                1000
            );
            super::return_freed_memory_at_once();
            assert_eq!(
                libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY),
                0
            );
        }
    }

    /// Which of the `pages` 4 KiB pages from `start` are resident.
    fn resident(start: *mut u8, pages: usize) -> Vec<bool> {
        let mut flags = vec![0u8; pages];
        // SAFETY: `start` is page-aligned and the range lies in one live
        // allocation; mincore only writes `pages` bytes into `flags`.
        let rc = unsafe { libc::mincore(start.cast(), pages * super::OS_PAGE, flags.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        flags.iter().map(|f| f & 1 == 1).collect()
    }

    #[test]
    fn a_large_allocation_starts_out_not_resident_even_on_a_reused_block() {
        use std::alloc::{GlobalAlloc, Layout};
        let size = 64 * 1024;
        let layout = Layout::from_size_align(size, 8).unwrap();
        let allocator = super::Allocator;
        // SAFETY: blocks are used within their layout and freed once.
        unsafe {
            // A block written and freed: mimalloc hands the same dirty
            // block out again on this thread (its purge delay keeps it).
            let first = allocator.alloc(layout);
            assert!(!first.is_null());
            first.write_bytes(0xab, size);
            assert!(resident(first, size / super::OS_PAGE).iter().all(|&r| r));
            allocator.dealloc(first, layout);

            let block = allocator.alloc(layout);
            assert!(!block.is_null());
            assert_eq!(
                block as usize % super::OS_PAGE,
                0,
                "mimalloc page-aligns this size class"
            );
            assert_eq!(
                resident(block, size / super::OS_PAGE),
                vec![false; size / super::OS_PAGE],
                "no page of a fresh large block is resident"
            );
            // Usable as any block: a written page comes back, and holds.
            block.add(size - 1).write(7);
            block.write(9);
            assert_eq!((block.read(), block.add(size - 1).read()), (9, 7));
            allocator.dealloc(block, layout);
        }
    }

    #[test]
    fn a_small_allocation_is_plain_mimalloc() {
        use std::alloc::{GlobalAlloc, Layout};
        let layout = Layout::from_size_align(super::UNTOUCHED_FROM - 1, 8).unwrap();
        let allocator = super::Allocator;
        // SAFETY: the block is used within its layout, grown once and freed.
        unsafe {
            let block = allocator.alloc(layout);
            assert!(!block.is_null());
            block.write_bytes(5, layout.size());
            let grown = allocator.realloc(block, layout, 4 * layout.size());
            assert!(!grown.is_null());
            // realloc keeps the contents, whatever the new size.
            assert!((0..layout.size()).all(|i| grown.add(i).read() == 5));
            allocator.dealloc(
                grown,
                Layout::from_size_align(4 * layout.size(), 8).unwrap(),
            );
        }
    }

    #[test]
    fn huge_pages_are_off_once_asked() {
        super::no_transparent_huge_pages().unwrap();
        // SAFETY: PR_GET_THP_DISABLE takes integer arguments only.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1);
    }
}
