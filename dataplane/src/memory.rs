//! How a proxy process keeps the memory its tunnels free and take again.
//!
//! Every tunnelled chunk passes through buffers that the libraries under the tunnel allocate
//! and free as it flows: rustls one per TLS record in each direction, h2 one per received DATA
//! frame. glibc's allocator gives the free top of a heap back to the kernel as soon as it
//! passes 128 KiB (`madvise(MADV_DONTNEED)` on the per-thread heaps), and maps anything over
//! 128 KiB on its own, so the next frame's buffer is faulted in as freshly zeroed pages. On the
//! single-stream HBONE benchmark that page-fault work was a tenth of all CPU time (`perf`:
//! `exc_page_fault` 8.6%, `madvise` 1.5%; 1.4% and none with the thresholds below).

/// Free memory a heap keeps before any of it goes back to the kernel: a few connections'
/// worth of in-flight frames (a stream's window is 4 MiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 32 * 1024 * 1024;
/// Allocations this large or larger get a mapping of their own; below it, frame and record
/// buffers (at most 1 MiB, the largest HTTP/2 frame) are reused from the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 4 * 1024 * 1024;

/// Makes the allocator keep freed tunnel buffers for reuse instead of returning them to the
/// kernel after every frame. Process-wide: call it once, first thing in a proxy binary's
/// `main` (and in anything that hosts proxies in-process, such as the benchmarks). Returns
/// whether the allocator took the settings (only glibc has them; elsewhere it is a no-op).
pub fn keep_freed_buffers() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only adjusts glibc's allocator parameters; it is safe to call at
        // any time, and returns 0 for a parameter or value it rejects.
        let trim = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) };
        // SAFETY: as above.
        let mmap = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
        trim == 1 && mmap == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_thresholds() {
        assert!(super::keep_freed_buffers());
    }
}
