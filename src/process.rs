//! Settings a process of ours makes for itself at start: `mqd`, `mqctl` and the peers'
//! benchmark client (benches/peers/peerbench, which includes this file by path, so it must
//! use nothing else of the crate).

/// Turns transparent huge pages off for this process, as `MIMALLOC_ALLOW_THP=0` would.
///
/// mimalloc, the allocator of `mqd` and `mqctl`, asks for huge pages on its arenas, returns
/// freed memory to the kernel after a second and faults it in again. Each fault of a huge
/// page zeroes 2 MiB, and with the kernel's default `defrag` setting (`madvise`) may first
/// compact memory to find one, while the thread that touched the memory waits. In `mqd`
/// those threads were applying Raft entries: at 8,000 msgs/s offered, 16–28 applies per
/// 10 s run took over 5 ms and the end-to-end p99 was 79–126 ms; without huge pages 0–2
/// applies did and the p99 was 8–21 ms. In `mqctl bench` they stopped the client for 25–50
/// ms at a time, with every send in flight waiting (docs/BENCHMARKS.md). With 4 KiB pages
/// a fault zeroes only the page touched.
#[cfg(target_os = "linux")]
pub fn no_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE reads no memory: it sets one flag on this process.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_THP_DISABLE,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Elsewhere there are no transparent huge pages to turn off.
#[cfg(not(target_os = "linux"))]
pub fn no_huge_pages() -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn the_process_is_left_without_huge_pages() {
        super::no_huge_pages().expect("prctl");
        // SAFETY: PR_GET_THP_DISABLE reads no memory and returns the flag.
        let flag = unsafe {
            libc::prctl(
                libc::PR_GET_THP_DISABLE,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        assert_eq!(flag, 1);
    }
}
