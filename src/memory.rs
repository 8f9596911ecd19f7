//! Gives memory the agent no longer uses back to the system.
//!
//! glibc's malloc keeps what the agent frees for later use: a console page,
//! a `/metrics` scrape or a burst of historical rows leaves its buffers
//! behind as resident memory that nothing reuses for a long time (measured:
//! a browser tab and a scrape for 20 s added 0.8 MB that stayed; a trim
//! gave it all back: BENCHMARKS.md, "Uplink cost", round 3). This module owns the
//! trim and when it happens: a short while after the console has answered
//! (`freed_soon`, coalesced) and once a minute. It also owns the one release
//! of the code and read-only data that only starting used
//! ([`release_start_pages`]). It must not allocate for anyone or decide
//! anything else; on other C libraries and systems it does nothing.
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Set by whoever has just freed a lot (the console after a response).
static FREED: Notify = Notify::const_new();

/// How long after a `freed_soon` the trim runs: the response's buffers are
/// dropped once hyper has written them, and requests come in bursts (a page
/// and its assets), one trim for the burst.
const SETTLE: Duration = Duration::from_millis(200);

/// The trim of the quiet times: the uplink's drain, reloads, the recorder.
const EVERY: Duration = Duration::from_secs(60);

/// Asks for a trim soon. Cheap: a flag, taken once by the trim task.
pub fn freed_soon() {
    FREED.notify_one();
}

/// Returns the heap's free pages to the system now.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes glibc's arena locks itself; it frees only
    // pages that no allocation holds.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims after each `freed_soon` (a burst counts once) and every minute,
/// until `stop`.
pub async fn run_trims(stop: CancellationToken) {
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = every.tick() => trim(),
            _ = FREED.notified() => {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(SETTLE) => trim(),
                }
            }
        }
    }
}

/// Unmaps the pages of the program's files (its own executable and the
/// shared libraries) that are mapped read-only and hold nothing but the
/// file's own bytes, and returns how many bytes were mapped before.
///
/// Starting runs code and reads tables that the running agent never needs
/// again (reading the config, migrating the store, parsing arguments), and
/// the kernel maps a file 64 KB around each page touched: at 50 machines
/// that was about a third of the agent's resident memory. A page still in
/// use comes back at its next use from the page cache (a minor fault), with
/// the same bytes: only pages that are the file's unchanged contents are
/// dropped. A page the loader wrote (relocated tables made read-only
/// afterwards) is anonymous memory, told apart by `/proc/self/pagemap`,
/// and is kept.
///
/// Call it only while no other thread can load or unload a library
/// (`dlopen`, e.g. glibc's NSS modules for a host name lookup): a mapping
/// read from `/proc/self/maps` must still be the same one when it is
/// released. The agent calls it once, when it runs alone in its process,
/// after starting and before its tasks run.
pub fn release_start_pages() -> std::io::Result<u64> {
    #[cfg(target_os = "linux")]
    {
        linux::release_start_pages()
    }
    #[cfg(not(target_os = "linux"))]
    {
        Ok(0)
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::fs::File;
    use std::io;
    use std::os::unix::fs::FileExt;

    /// A mapping of a file, read-only and private: `start..end`.
    #[derive(Debug, PartialEq, Eq)]
    pub(super) struct FileMapping {
        pub(super) start: usize,
        pub(super) end: usize,
    }

    /// `/proc/self/pagemap`: the page is present, and it is a page of a
    /// file or shared memory (not anonymous: not written since mapped).
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    const FILE_OR_SHARED: u64 = 1 << 61;

    /// The mappings worth releasing: private, read-only (`r--p`, `r-xp`),
    /// of the executable itself or a shared library.
    pub(super) fn file_mappings(maps: &str, exe: &str) -> Vec<FileMapping> {
        let mut found = Vec::new();
        for line in maps.lines() {
            let mut fields = line.split_ascii_whitespace();
            let (Some(range), Some(perms), Some(_offset), Some(_dev), Some(inode)) = (
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
            ) else {
                continue;
            };
            let path = fields.collect::<Vec<_>>().join(" ");
            // The program and its shared libraries only (`libc.so.6`,
            // `libm.so`), not any other file someone mapped read-only.
            let ours = path == exe || path.ends_with(".so") || path.contains(".so.");
            if !(perms == "r--p" || perms == "r-xp") || inode == "0" || !ours {
                continue;
            }
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            if start < end {
                found.push(FileMapping { start, end });
            }
        }
        found
    }

    /// The runs of pages (`start..end`, in pages of the mapping) whose
    /// pagemap entries say they hold only the file's bytes (or nothing yet).
    pub(super) fn releasable_runs(entries: &[u64]) -> Vec<(usize, usize)> {
        let mut runs = Vec::new();
        let mut open: Option<usize> = None;
        for (i, &e) in entries.iter().enumerate() {
            let written = e & SWAPPED != 0 || (e & PRESENT != 0 && e & FILE_OR_SHARED == 0);
            match (written, open) {
                (false, None) => open = Some(i),
                (true, Some(from)) => {
                    runs.push((from, i));
                    open = None;
                }
                _ => {}
            }
        }
        if let Some(from) = open {
            runs.push((from, entries.len()));
        }
        runs
    }

    pub(super) fn release_start_pages() -> io::Result<u64> {
        // SAFETY: sysconf reads a constant of the system.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = usize::try_from(page)
            .ok()
            .filter(|p| p.is_power_of_two())
            .ok_or_else(|| io::Error::other("no page size"))?;
        let exe = std::fs::read_link("/proc/self/exe")?;
        let maps = std::fs::read_to_string("/proc/self/maps")?;
        let pagemap = File::open("/proc/self/pagemap")?;
        let mut released = 0u64;
        for m in file_mappings(&maps, &exe.to_string_lossy()) {
            let pages = (m.end - m.start) / page;
            let mut raw = vec![0u8; pages * 8];
            pagemap.read_exact_at(&mut raw, (m.start / page * 8) as u64)?;
            let entries: Vec<u64> = raw
                .chunks_exact(8)
                .map(|c| u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
            for (from, to) in releasable_runs(&entries) {
                let at = m.start + from * page;
                let len = (to - from) * page;
                released += entries[from..to]
                    .iter()
                    .filter(|&&e| e & PRESENT != 0)
                    .count() as u64
                    * page as u64;
                // SAFETY: `at..at + len` lies in a private, read-only mapping
                // of a file, and pagemap says none of its pages was written
                // (copied on write): dropping them makes the next access read
                // the same bytes from the file. The caller guarantees that no
                // other thread maps or unmaps files meanwhile.
                let r = unsafe { libc::madvise(at as *mut libc::c_void, len, libc::MADV_DONTNEED) };
                if r != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_trim_task_takes_a_burst_of_requests_and_ends_on_stop() {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_trims(stop.clone()));
        for _ in 0..10 {
            freed_soon();
        }
        tokio::time::sleep(SETTLE * 3).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the trim task ends on stop")
            .expect("the trim task does not panic");
    }

    #[test]
    fn a_trim_gives_back_freed_memory_and_keeps_live_allocations() {
        let kept: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 4096]).collect();
        drop((0..2048).map(|_| vec![7u8; 4096]).collect::<Vec<_>>());
        trim();
        assert!(kept
            .iter()
            .enumerate()
            .all(|(i, v)| v.iter().all(|&b| b == i as u8)));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn only_read_only_private_mappings_of_the_program_and_its_libraries_are_released() {
        let maps = "\
00200000-00370000 r--p 00000000 fe:00 5309549   /usr/bin/linegate
00370000-00854000 r-xp 0016f000 fe:00 5309549   /usr/bin/linegate
00854000-0097a000 r--p 00652000 fe:00 5309549   /usr/bin/linegate
0097a000-00981000 rw-p 00777000 fe:00 5309549   /usr/bin/linegate
7f0000000000-7f0000001000 rw-s 00000000 fe:00 77 /var/lib/linegate/linegate.db-shm
7f0000100000-7f0000200000 r--p 00000000 fe:00 78 /var/lib/linegate/some data file
7f0000200000-7f0000210000 r--p 00000000 fe:00 80 /run/linegate/console.sock
7f0000300000-7f0000400000 r-xp 00028000 fe:00 79 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000500000-7f0000600000 r--p 00000000 00:00 0 
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
garbage line
";
        let found = linux::file_mappings(maps, "/usr/bin/linegate");
        let starts: Vec<usize> = found.iter().map(|m| m.start).collect();
        assert_eq!(
            starts,
            vec![0x0020_0000, 0x0037_0000, 0x0085_4000, 0x7f00_0030_0000]
        );
        assert_eq!(found[3].end, 0x7f00_0040_0000);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn pages_the_loader_wrote_are_kept_and_the_rest_released_in_runs() {
        const PRESENT_FILE: u64 = (1 << 63) | (1 << 61);
        const PRESENT_ANON: u64 = 1 << 63;
        const SWAPPED: u64 = 1 << 62;
        let entries = [
            PRESENT_FILE,
            0,
            PRESENT_ANON,
            PRESENT_FILE,
            PRESENT_FILE,
            SWAPPED,
            0,
        ];
        assert_eq!(
            linux::releasable_runs(&entries),
            vec![(0, 2), (3, 5), (6, 7)]
        );
        assert_eq!(linux::releasable_runs(&[PRESENT_ANON]), vec![]);
        assert_eq!(linux::releasable_runs(&[]), vec![]);
    }
}
