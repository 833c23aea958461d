//! The free-space guard: sends are refused with `STORAGE_FULL` while the file system
//! holding the data directory has less than `min_free_mib` free, so that the disk never
//! fills under the node. Receives, acks, nacks and deletes still go through the log in
//! the space kept in reserve, and sends resume by themselves once space returns.
//!
//! A failed log write is fatal for a Raft group (openraft stops it), so running out of
//! space must be avoided rather than handled; the reserve is what makes that possible.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often free space is measured.
const POLL: Duration = Duration::from_millis(250);

/// Free space as last measured, against the reserve. Cheap to clone.
#[derive(Clone)]
pub struct DiskGuard {
    free: Arc<AtomicU64>,
    min_free: u64,
}

impl Default for DiskGuard {
    /// A guard that never refuses.
    fn default() -> Self {
        DiskGuard {
            free: Arc::new(AtomicU64::new(u64::MAX)),
            min_free: 0,
        }
    }
}

impl DiskGuard {
    /// Measures the file system of `dir` now and then every 250 ms, until `stop` is
    /// dropped; `min_free` bytes are the reserve (0: never refuse).
    pub fn start(dir: &Path, min_free: u64, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        let guard = DiskGuard {
            free: Arc::new(AtomicU64::new(available(dir).unwrap_or(u64::MAX))),
            min_free,
        };
        if min_free > 0 {
            let (free, dir, mut stop) = (guard.free.clone(), dir.to_path_buf(), stop);
            tokio::spawn(async move {
                let mut was_full = false;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(POLL) => {}
                        r = stop.changed() => if r.is_err() || *stop.borrow() { return },
                    }
                    let dir: PathBuf = dir.clone();
                    let Ok(Some(now)) = tokio::task::spawn_blocking(move || available(&dir)).await
                    else {
                        continue;
                    };
                    free.store(now, Ordering::Relaxed);
                    let full = now < min_free;
                    if full != was_full {
                        if full {
                            tracing::warn!(
                                free_mib = now >> 20,
                                min_free_mib = min_free >> 20,
                                "disk nearly full: refusing sends until space is freed"
                            );
                        } else {
                            tracing::info!(
                                free_mib = now >> 20,
                                "disk space back above the reserve: taking sends again"
                            );
                        }
                        was_full = full;
                    }
                }
            });
        }
        guard
    }

    /// Why a send must be refused now, if it must.
    pub fn refusal(&self) -> Option<String> {
        let free = self.free.load(Ordering::Relaxed);
        (free < self.min_free).then(|| {
            format!(
                "the node's disk has {} MiB free, below its min_free_mib reserve of {} MiB: sends are refused until space is freed (receives, acks and deletes go on)",
                free >> 20,
                self.min_free >> 20
            )
        })
    }
}

/// Bytes available to unprivileged writers on the file system holding `dir`.
fn available(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid NUL-terminated string and `st` points to writable memory
    // of the right type; statvfs fills it completely when it returns 0.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so `st` is initialized. (Both fields are u64 on the
    // 64-bit Linux targets mqd ships for.)
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_the_temp_dir_and_refuses_below_the_reserve() {
        let dir = std::env::temp_dir();
        let free = available(&dir).expect("statvfs");
        assert!(free > 0);
        let ok = DiskGuard {
            free: Arc::new(AtomicU64::new(free)),
            min_free: 0,
        };
        assert_eq!(ok.refusal(), None);
        let full = DiskGuard {
            free: Arc::new(AtomicU64::new(10 << 20)),
            min_free: 256 << 20,
        };
        let why = full.refusal().expect("refused");
        assert!(
            why.contains("10 MiB free") && why.contains("256 MiB"),
            "{why}"
        );
        assert!(available(Path::new("/no/such/dir")).is_none());
    }
}
