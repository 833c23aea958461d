//! Deleting large files (Raft log segments, body files) without stalling the other writers
//! of the same disk.
//!
//! On a file system mounted with `discard`, as cloud disks often are, freeing a file's
//! blocks hands them all to the device as discards: on this project's test machines (ext4
//! without a journal) within the unlink itself, on a journaled ext4 at the next journal
//! commit. An `fdatasync` that comes meanwhile waits behind them. Measured here: unlinking
//! a 32 MiB log segment took 9-11 ms, and the log writer's next sync was held as long;
//! every send in flight waited with it (a 10-20 ms step in the send latency, once per
//! segment purged).
//!
//! So a file is first renamed out of the way ([`trash_name`]: a rename frees no block) and
//! handed to one thread per process, which cuts it from its end [`STEP`] bytes at a time,
//! syncing each cut (so that a journal commits it, and its discards go, before the next)
//! and pausing between cuts, then unlinks what is left. A file that a reader still has
//! open (a snapshot being sent, a log read) is left whole until the last other handle is
//! dropped: cutting it would take bytes from under that reader, while an unlink would not.
//!
//! A crash leaves `.trash` files behind; the stores delete them when they open
//! ([`is_trash`]).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Bytes cut from a file's end at a time.
pub const STEP: u64 = 4 << 20;
/// Pause after each cut, for the other writers' syncs to go first.
const PAUSE: Duration = Duration::from_millis(2);
/// How often files still open elsewhere are looked at again.
const RECHECK: Duration = Duration::from_millis(100);
const TRASH_SUFFIX: &str = "trash";

/// The name a file takes while it waits to be deleted: same directory and stem, extension
/// `.trash`.
pub fn trash_name(path: &Path) -> PathBuf {
    path.with_extension(TRASH_SUFFIX)
}

/// Whether `name` is a file left to be deleted (by a crash before it was).
pub fn is_trash(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(stem, ext)| !stem.is_empty() && ext == TRASH_SUFFIX)
}

struct Doomed {
    path: PathBuf,
    file: Arc<File>,
}

static QUEUE: OnceLock<mpsc::Sender<Doomed>> = OnceLock::new();

fn queue() -> &'static mpsc::Sender<Doomed> {
    QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        if let Err(e) = std::thread::Builder::new()
            .name("mqd-reclaim".into())
            .spawn(move || run(&rx))
        {
            // The receiver is gone with the closure: every send fails, and the caller
            // deletes the file itself.
            tracing::warn!(error = %e, "no thread for deleting files gradually; they are deleted at once");
        }
        tx
    })
}

/// Renames `path` to its [`trash_name`] and deletes it in the background, gradually, once
/// `file` (its open handle) is the last handle left. If the rename fails the file is
/// deleted at once instead; a file already gone is no error.
pub fn delete(path: &Path, file: Arc<File>) -> io::Result<()> {
    let trash = trash_name(path);
    match std::fs::rename(path, &trash) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "could not set a file aside for gradual deletion; deleting it at once");
            return std::fs::remove_file(path);
        }
    }
    if let Err(mpsc::SendError(d)) = queue().send(Doomed { path: trash, file }) {
        return std::fs::remove_file(&d.path);
    }
    Ok(())
}

/// Deletes the `.trash` files in `dir`, at once (for stores opening).
pub fn clear(dir: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_name().to_str().is_some_and(is_trash) {
            remove(&e.path())?;
        }
    }
    Ok(())
}

/// Deletes one `.trash` file at once; one that the background thread deleted first is no
/// error.
pub fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(file = %path.display(), "removed a file left to be deleted");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn run(rx: &mpsc::Receiver<Doomed>) {
    let mut waiting: VecDeque<Doomed> = VecDeque::new();
    loop {
        let next = if waiting.is_empty() {
            rx.recv().ok()
        } else {
            rx.recv_timeout(RECHECK).ok()
        };
        waiting.extend(next);
        waiting.extend(rx.try_iter());
        for _ in 0..waiting.len() {
            let Some(d) = waiting.pop_front() else { break };
            match Arc::try_unwrap(d.file) {
                Ok(file) => {
                    if let Err(e) = cut_and_remove(&d.path, file) {
                        tracing::warn!(file = %d.path.display(), error = %e,
                            "deleting a file failed; it is deleted when its store next opens");
                    }
                }
                Err(file) => waiting.push_back(Doomed { path: d.path, file }),
            }
        }
    }
}

/// Cuts `file` down from its end [`STEP`] bytes at a time, each cut synced, then unlinks
/// `path` (at once if a cut fails).
fn cut_and_remove(path: &Path, file: File) -> io::Result<()> {
    if let Err(e) = cut(&file) {
        tracing::warn!(file = %path.display(), error = %e, "could not free a file gradually; deleting it at once");
    }
    drop(file);
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn cut(file: &File) -> io::Result<()> {
    let mut len = file.metadata()?.len();
    while len > STEP {
        len -= STEP;
        file.set_len(len)?;
        file.sync_data()?;
        std::thread::sleep(PAUSE);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    use std::time::Instant;

    use super::*;

    fn wait_gone(path: &Path) {
        let until = Instant::now() + Duration::from_secs(30);
        while path.exists() {
            assert!(
                Instant::now() < until,
                "{} was never deleted",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn filled(path: &Path, len: usize) -> Arc<File> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap();
        f.write_all(&vec![7u8; len]).unwrap();
        Arc::new(f)
    }

    #[test]
    fn a_file_is_set_aside_at_once_and_deleted_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000001.seg");
        let f = filled(&path, (2 * STEP + 5) as usize);
        delete(&path, f).unwrap();
        assert!(!path.exists(), "the file keeps its name");
        wait_gone(&trash_name(&path));
    }

    #[test]
    fn a_file_still_open_elsewhere_stays_whole_until_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0000000000000002.body");
        let len = (STEP + 10) as usize;
        let f = filled(&path, len);
        let reader = f.clone();
        delete(&path, f).unwrap();
        // Looked at again every RECHECK; several rounds pass while the reader holds it.
        std::thread::sleep(RECHECK * 3);
        let mut buf = vec![0u8; len];
        reader.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 7), "a reader saw the file cut");
        assert!(trash_name(&path).exists());
        drop(reader);
        wait_gone(&trash_name(&path));
    }

    #[test]
    fn trash_is_recognised_and_cleared() {
        assert!(is_trash("00000000000000000001.trash"));
        assert!(!is_trash("00000000000000000001.seg"));
        assert!(!is_trash(".trash"));
        assert!(!is_trash("trash"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1.trash"), b"x").unwrap();
        std::fs::write(dir.path().join("1.seg"), b"x").unwrap();
        clear(dir.path()).unwrap();
        assert!(!dir.path().join("1.trash").exists());
        assert!(dir.path().join("1.seg").exists());
    }
}
