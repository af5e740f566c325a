//! Giving back the code pages that only drover's start or a reload ran.
//!
//! The kernel maps a program's code into a process as it is run and leaves
//! it mapped: every page of drover's (and libc's) code that parsing the
//! command line, reading the config and starting the children touched stays
//! in drover's resident set for as long as drover runs, though a supervisor
//! that only restarts children and answers `status` never runs it again.
//! [`release_code_pages`] unmaps those pages; the ones the loop still uses
//! are mapped again at their next use, from the page cache, by a minor
//! fault.
//!
//! Only pages that are exactly the file's contents are released: each one
//! is checked in `/proc/self/pagemap` to be a page of the file itself, not
//! a private copy. A page something wrote to — relocations, a debugger's
//! breakpoint, a uprobe — is a private copy and is left alone, so nothing
//! a release drops can be anything but the file's bytes, which the next
//! fault brings back unchanged.

use std::ffi::{c_int, c_void};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

/// `/proc/PID/pagemap` entry bits: the page is present, and it is a page of
/// a file (or shared memory), not an anonymous private copy.
const PRESENT: u64 = 1 << 63;
const FILE_PAGE: u64 = 1 << 61;

/// What a release did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// Pages unmapped.
    pub pages: usize,
    /// Pages of read-only segments left mapped because they are private
    /// copies (written to since they were mapped).
    pub kept_private: usize,
}

/// Unmaps the resident, unmodified pages of every read-only segment (code,
/// constants) of drover and the libraries it loaded, except the kernel's
/// vDSO. Pages still in use come back at their next use; see the module
/// documentation for why nothing else can change.
///
/// Never inlined: bench/hot_code.py waits for its first run to tell the
/// start from what follows, and lays it out with the loop's code.
#[inline(never)]
pub fn release_code_pages() -> io::Result<Released> {
    let page = page_size();
    let mut released = Released::default();
    let mut runs: Vec<Range<usize>> = Vec::new();
    {
        let pagemap = File::open("/proc/self/pagemap")?;
        let mut entries: Vec<u64> = Vec::new();
        for segment in read_only_segments(page) {
            let pages = (segment.end - segment.start) / page;
            entries.clear();
            entries.resize(pages, 0);
            // SAFETY: a Vec<u64> of `pages` entries is `pages * 8`
            // initialised bytes; u8 has no alignment or validity requirement.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(entries.as_mut_ptr().cast::<u8>(), pages * 8)
            };
            pagemap.read_exact_at(bytes, (segment.start / page * 8) as u64)?;
            let mut run: Option<usize> = None;
            for (i, &entry) in entries.iter().chain(std::iter::once(&0)).enumerate() {
                let file_page = entry & PRESENT != 0 && entry & FILE_PAGE != 0;
                if entry & PRESENT != 0 && entry & FILE_PAGE == 0 {
                    released.kept_private += 1;
                }
                match (file_page, run) {
                    (true, None) => run = Some(i),
                    (false, Some(first)) => {
                        runs.push(segment.start + first * page..segment.start + i * page);
                        released.pages += i - first;
                        run = None;
                    }
                    _ => {}
                }
            }
        }
    }
    // Only now, and with nothing else called in between: code that ran
    // after a release (reading the next segment's entries, closing the
    // file) would be mapped right back, and with it the 64 KiB around it.
    for range in runs.iter() {
        release(range.clone())?;
    }
    Ok(released)
}

/// Unmaps `range`, whose pages were just seen to be unmodified file pages.
#[inline(always)]
fn release(range: Range<usize>) -> io::Result<()> {
    // SAFETY: `range` lies in a read-only, file-backed segment of a loaded
    // object, and each of its pages was a page of the file itself, not a
    // private copy: MADV_DONTNEED only removes the mapping, and the next
    // access maps the same file page again. Nothing in drover holds a
    // pointer that depends on the mapping staying (it is the same bytes).
    let rc = unsafe {
        libc::madvise(
            range.start as *mut c_void,
            range.end - range.start,
            libc::MADV_DONTNEED,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

/// The page-aligned address ranges of the loaded objects' PT_LOAD segments
/// that are not writable (code and read-only data), shrunk inward to whole
/// pages, without the vDSO's.
fn read_only_segments(page: usize) -> Vec<Range<usize>> {
    let mut found = Segments {
        page,
        // SAFETY: getauxval has no preconditions; 0 means absent.
        vdso: unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) } as usize,
        ranges: Vec::new(),
    };
    // SAFETY: the callback matches the expected signature and `data` points
    // to `found`, which outlives the call; dl_iterate_phdr calls it
    // synchronously on this thread.
    unsafe {
        libc::dl_iterate_phdr(
            Some(collect_read_only),
            (&mut found as *mut Segments).cast::<c_void>(),
        )
    };
    found.ranges
}

struct Segments {
    page: usize,
    vdso: usize,
    ranges: Vec<Range<usize>>,
}

/// `dl_iterate_phdr` callback: records the read-only PT_LOAD segments of
/// each object but the vDSO (whose ELF header is at AT_SYSINFO_EHDR, with
/// its program headers on the same page).
unsafe extern "C" fn collect_read_only(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut c_void,
) -> c_int {
    // SAFETY: dl_iterate_phdr passes a valid `info` for the duration of the
    // callback, and `data` is the `&mut Segments` of `read_only_segments`,
    // not aliased while the iteration runs.
    let (info, found) = unsafe { (&*info, &mut *data.cast::<Segments>()) };
    if info.dlpi_phdr.is_null() {
        return 0;
    }
    let headers_at = info.dlpi_phdr as usize;
    if found.vdso != 0 && headers_at.wrapping_sub(found.vdso) < found.page {
        return 0;
    }
    // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers of this
    // object, valid during the callback.
    let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
    for h in headers {
        if h.p_type != libc::PT_LOAD || h.p_flags & libc::PF_W != 0 || h.p_memsz == 0 {
            continue;
        }
        let start = (info.dlpi_addr as usize).wrapping_add(h.p_vaddr as usize);
        let end = start.saturating_add(h.p_memsz as usize);
        let first = start.div_ceil(found.page) * found.page;
        let last = end / found.page * found.page;
        if first < last {
            found.ranges.push(first..last);
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 256 KiB of constants no other test reads: its middle pages share no
    /// 64 KiB fault-around block with anything another thread touches.
    static BLOCKS: [u8; 256 * 1024] = {
        let mut b = [0u8; 256 * 1024];
        let mut i = 0;
        while i < b.len() {
            b[i] = (i % 251) as u8 + 1;
            i += 1;
        }
        b
    };

    /// Pointers: the loader writes them at start (relocations), so their
    /// pages are private copies, in a writable (RELRO) segment.
    static NAMES: [&str; 2] = ["spawn", "fork"];

    fn present(addr: usize) -> bool {
        let page = page_size();
        let mut entry = [0u8; 8];
        File::open("/proc/self/pagemap")
            .and_then(|f| f.read_exact_at(&mut entry, (addr / page * 8) as u64))
            .expect("pagemap");
        u64::from_ne_bytes(entry) & PRESENT != 0
    }

    #[test]
    fn released_constants_leave_and_come_back_the_same() {
        let middle = 128 * 1024;
        let addr = &BLOCKS[middle] as *const u8 as usize;
        // SAFETY: a plain read of a static, volatile so it is not folded.
        let first = unsafe { std::ptr::read_volatile(&BLOCKS[middle]) };
        assert!(present(addr));
        let released = release_code_pages().expect("release");
        assert!(released.pages > 0, "{released:?}");
        assert!(
            !present(addr),
            "the page read before the release is still mapped"
        );
        // SAFETY: as above.
        assert_eq!(unsafe { std::ptr::read_volatile(&BLOCKS[middle]) }, first);
        assert_eq!(first, (middle % 251) as u8 + 1);
        assert!(present(addr));
        release_code_pages().expect("a second release");
        assert_eq!(NAMES.concat(), "spawnfork");
    }

    #[test]
    fn segments_cover_code_and_constants_and_nothing_written() {
        #[inline(never)]
        fn probe(x: u64) -> u64 {
            x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17)
        }
        let page = page_size();
        let segments = read_only_segments(page);
        let within = |addr: usize| segments.iter().any(|r| r.contains(&addr));
        assert!(within(probe as fn(u64) -> u64 as usize), "{segments:x?}");
        assert!(within(BLOCKS.as_ptr() as usize));
        assert!(!within(NAMES.as_ptr() as usize), "relocated pointers");
        let local = 0u8;
        assert!(!within(&local as *const u8 as usize), "the stack");
        assert!(
            segments
                .iter()
                .all(|r| r.start % page == 0 && r.end % page == 0)
        );
        assert_eq!(probe(1), 0x9E37_79B9_7F4A_7C15u64.rotate_left(17));
    }
}
