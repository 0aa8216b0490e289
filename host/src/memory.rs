//! The process's resident memory once start-up, or a guest's compile, is over.
//!
//! Starting runs code that steady running never runs again (the command line, the config
//! parsers, wasmtime's component loading, the broker's set-up), and the kernel maps 64 KiB of
//! neighbours around each page that faults in, so after a start most of the binary's and libc's
//! resident pages are ones nothing will run. They are clean copies of files, exactly what the
//! kernel's own reclaim may drop at any time: [`release_clean_pages`] drops the process's
//! mappings of them. The page cache keeps the pages, the ones still in use fault back in (a
//! minor fault each), and the process's resident set becomes its working set (BENCHMARKS.md:
//! footprint). It also hands the heap's free memory back to the system. Compiling a guest (on a
//! first start, or for a swap) leaves the same behind: Cranelift's code, its temporaries' heap.
//!
//! It owns nothing and receives nothing. It acts on the whole process, so the library never
//! calls it: the `mqhook` binary does once its ingest is up and after each guest swap
//! ([`ActiveGuest::subscribe`](crate::guest::ActiveGuest::subscribe)), and a broker that embeds
//! mqhook may at the end of its own start.

use std::path::Path;

/// What [`release_clean_pages`] gave back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// File mappings whose resident pages were dropped.
    pub mappings: usize,
    /// Their resident bytes before.
    pub bytes: u64,
}

/// Drops the process's resident pages of its executable and shared libraries that are unmodified
/// copies of the file (the page cache keeps them; what runs again faults back in), and trims the
/// heap.
///
/// Only mappings that stay for the life of the process are touched (the executable and the
/// `.so` files, never unloaded here), so an address range read from `/proc/self/smaps` cannot be
/// reused by another mapping before it is released; and only read-only ones without a private
/// (written) page, whose contents the file gives back exactly.
pub fn release_clean_pages() -> std::io::Result<Released> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let executable = std::fs::read_link("/proc/self/exe")?;
    let mut released = Released::default();
    for mapping in Mapping::parse_all(&smaps) {
        if mapping.is_clean_image(&executable) && advise_dont_need(mapping.start, mapping.end - mapping.start) {
            released.mappings += 1;
            released.bytes += mapping.resident_kib * 1024;
        }
    }
    trim_heap();
    Ok(released)
}

/// One mapping of `/proc/self/smaps`, the fields this module reads.
#[derive(Debug, Default, PartialEq, Eq)]
struct Mapping<'a> {
    start: usize,
    end: usize,
    /// `rwxp`-style permissions.
    permissions: &'a str,
    inode: u64,
    path: &'a str,
    resident_kib: u64,
    /// Pages that are the process's own (written, or never backed by the file).
    anonymous_kib: u64,
    /// Locked in memory (`lo` in `VmFlags`): never released.
    locked: bool,
}

impl<'a> Mapping<'a> {
    /// The mappings of an smaps text, in order; lines this module does not know are skipped.
    fn parse_all(smaps: &'a str) -> Vec<Mapping<'a>> {
        let mut mappings: Vec<Mapping<'a>> = Vec::new();
        for line in smaps.lines() {
            if let Some(header) = Mapping::parse_header(line) {
                mappings.push(header);
                continue;
            }
            let Some(mapping) = mappings.last_mut() else { continue };
            let Some((key, value)) = line.split_once(':') else { continue };
            let kib = || value.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap_or(0);
            match key {
                "Rss" => mapping.resident_kib = kib(),
                "Anonymous" => mapping.anonymous_kib = kib(),
                "VmFlags" => mapping.locked = value.split_whitespace().any(|flag| flag == "lo"),
                _ => {}
            }
        }
        mappings
    }

    /// `start-end perms offset dev inode [path]`, or `None` for a field line.
    fn parse_header(line: &'a str) -> Option<Mapping<'a>> {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        let permissions = fields.next()?;
        let _offset = fields.next()?;
        let _device = fields.next()?;
        let inode = fields.next()?.parse().ok()?;
        // The path is the rest of the line, spaces included.
        let path = line.splitn(6, char::is_whitespace).nth(5).map_or("", str::trim_start);
        (permissions.len() == 4 && end > start).then_some(Mapping {
            start,
            end,
            permissions,
            inode,
            path,
            ..Mapping::default()
        })
    }

    /// A read-only private mapping of the executable or a shared library, resident, with no page
    /// of its own: dropping its pages loses nothing the file does not hold.
    fn is_clean_image(&self, executable: &Path) -> bool {
        let read_only_private = self.permissions.as_bytes()[1] == b'-' && self.permissions.as_bytes()[3] == b'p';
        let image = Path::new(self.path) == executable || is_shared_object(self.path);
        read_only_private
            && image
            && self.inode != 0
            && self.resident_kib > 0
            && self.anonymous_kib == 0
            && !self.locked
    }
}

/// `libc.so.6`, `ld-linux-x86-64.so.2`, `libfoo.so`: a shared object's file name.
fn is_shared_object(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.ends_with(".so") || name.contains(".so.")
}

/// `madvise(MADV_DONTNEED)` on `[start, start + length)`; false when the kernel refused.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn advise_dont_need(start: usize, length: usize) -> bool {
    // SAFETY: the range is one whole mapping from /proc/self/smaps, of a file that stays mapped
    // for the life of the process (so no other mapping can take the range meanwhile), read-only
    // and without a private page: after MADV_DONTNEED its pages read back from the file exactly
    // as they were, so no memory the program uses changes.
    unsafe { libc::madvise(start as *mut libc::c_void, length, libc::MADV_DONTNEED) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn advise_dont_need(_start: usize, _length: usize) -> bool {
    false
}

/// Returns the free memory at the top of the heap, and free pages inside it, to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_heap() {
    // SAFETY: glibc's malloc_trim takes each arena's lock; it only releases memory that is free.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0200000 r--p 00000000 08:01 1234                       /usr/bin/mqhook
Size:               2048 kB
Rss:                 900 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd
55d0c0200000-55d0c0300000 r-xp 00200000 08:01 1234                       /usr/bin/mqhook
Rss:                 640 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me sd
55d0c0300000-55d0c0380000 r--p 00300000 08:01 1234                       /usr/bin/mqhook
Rss:                 512 kB
Anonymous:           512 kB
VmFlags: rd mr mw me ac sd
55d0c0380000-55d0c0390000 rw-p 00380000 08:01 1234                       /usr/bin/mqhook
Rss:                  64 kB
Anonymous:            12 kB
7f0000000000-7f0000100000 r-xp 00028000 08:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                1200 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me lo sd
7f0000200000-7f0000300000 r-xp 00000000 08:01 77                         /var/cache/guest with space.cwasm
Rss:                  80 kB
Anonymous:             0 kB
7f0000400000-7f0000500000 r-xp 00000000 00:00 0 
Rss:                 600 kB
Anonymous:           600 kB
7f0000600000-7f0000700000 r--p 00000000 08:01 98                         /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
Rss:                 128 kB
Anonymous:             0 kB
";

    fn released(smaps: &str) -> Vec<(usize, &str)> {
        let executable = Path::new("/usr/bin/mqhook");
        Mapping::parse_all(smaps)
            .into_iter()
            .filter(|mapping| mapping.is_clean_image(executable))
            .map(|mapping| (mapping.start, mapping.path))
            .collect()
    }

    #[test]
    fn only_clean_read_only_mappings_of_the_executable_and_shared_objects_are_released() {
        // Released: the executable's read-only data and code, ld.so. Kept: the relocated data
        // (written by the loader), the writable data, a locked libc, a file that is not an image
        // (it may be unmapped and its range reused), anonymous code.
        assert_eq!(
            released(SMAPS),
            vec![
                (0x55d0c0000000, "/usr/bin/mqhook"),
                (0x55d0c0200000, "/usr/bin/mqhook"),
                (0x7f0000600000, "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
            ]
        );
        let paths: Vec<&str> = Mapping::parse_all(SMAPS).iter().map(|mapping| mapping.path).collect();
        assert!(paths.contains(&"/var/cache/guest with space.cwasm"), "{paths:?}");
    }

    #[test]
    fn shared_objects_are_told_by_their_file_name() {
        for name in ["/lib/libc.so.6", "/usr/lib/libfoo.so", "/lib64/ld-linux-x86-64.so.2"] {
            assert!(is_shared_object(name), "{name}");
        }
        for name in ["/usr/bin/mqhook", "/tmp/so.txt", "/data/x.sock", "[vdso]", ""] {
            assert!(!is_shared_object(name), "{name}");
        }
    }

    #[test]
    fn the_process_keeps_running_its_code_after_its_pages_are_released() {
        // This test binary's own code and libc: released, then run again (this assertion, the
        // formatting, the allocator) from the pages faulted back in.
        let released = release_clean_pages().expect("reading /proc/self/smaps");
        assert!(released.mappings >= 2, "{released:?}");
        assert!(released.bytes > 0, "{released:?}");
        let resident_now = Mapping::parse_all(&std::fs::read_to_string("/proc/self/smaps").unwrap())
            .iter()
            .filter(|mapping| mapping.is_clean_image(&std::fs::read_link("/proc/self/exe").unwrap()))
            .map(|mapping| mapping.resident_kib * 1024)
            .sum::<u64>();
        assert!(resident_now < released.bytes, "resident {resident_now} B after releasing {released:?}");
        assert_eq!(format!("{}", 6 * 7), "42");
    }
}
