//! What a shard's Raft snapshot carries, without copying the shard to build it.
//!
//! Building a snapshot opens a redb read transaction: O(1), and redb keeps the pages of that
//! view alive until the snapshot is dropped, so the state sent later is exactly the state at
//! the snapshot's log id. Sending streams the tables from it in chunks
//! ([`crate::store::snapshot`]); the receiver spools the chunks to a file and installs them
//! in one write transaction. Memory stays bounded by a chunk at every step.

use std::fmt;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::store::bodies::BodyPin;
use crate::store::snapshot::{for_each_chunk, Chunk};
use crate::store::StoreError;

/// Target size of one chunk on the wire and in a spool file.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Largest chunk accepted from a peer or a spool file.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024 * 1024;

/// The data of a snapshot.
#[derive(Clone)]
pub enum SnapshotData {
    /// This node's state as of a read transaction, pinned while the snapshot lives, with
    /// the body files it refers to.
    Pinned(Arc<(redb::ReadTransaction, BodyPin)>),
    /// Chunks received from a leader, spooled to a file that is removed when dropped.
    Spooled(Arc<Spool>),
    /// Chunks in memory: the empty snapshot openraft asks for before a chunked transfer,
    /// and tests.
    Chunks(Vec<Chunk>),
}

impl fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotData::Pinned(_) => write!(f, "Pinned"),
            SnapshotData::Spooled(s) => write!(f, "Spooled({})", s.path.display()),
            SnapshotData::Chunks(c) => write!(f, "Chunks({})", c.len()),
        }
    }
}

/// Why a snapshot could not be read, spooled or installed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The state machine's database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The spool file failed.
    #[error("snapshot spool {path}: {source}")]
    Io {
        /// The spool file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A chunk did not decode or was too large.
    #[error("malformed snapshot chunk: {0}")]
    Malformed(String),
    /// The consumer of the chunks stopped (the transfer was cancelled).
    #[error("snapshot transfer stopped: {0}")]
    Stopped(String),
}

/// A file of length-prefixed, postcard-encoded chunks: `u32 length (big-endian) | chunk`.
pub struct Spool {
    path: PathBuf,
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes a spool file chunk by chunk; [`SpoolWriter::finish`] turns it into snapshot data.
pub struct SpoolWriter {
    spool: Spool,
    out: BufWriter<std::fs::File>,
}

fn is_spool_name(name: &str) -> bool {
    name.starts_with("shard-") && name.contains(".incoming-") && name.ends_with(".snap")
}

/// Removes the spool files in `dir`; run before any transfer starts.
pub fn remove_stale_spools(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_str().is_some_and(is_spool_name) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => {
                    tracing::info!(file = %e.path().display(), "removed an unfinished snapshot transfer")
                }
                Err(err) => {
                    tracing::warn!(file = %e.path().display(), error = %err, "cannot remove an unfinished snapshot transfer")
                }
            }
        }
    }
}

impl SpoolWriter {
    /// Creates a new spool file in `dir`.
    pub fn create(dir: &Path, group: u64) -> Result<SpoolWriter, SnapshotError> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!(
            "shard-{group:04}.incoming-{}-{n}.snap",
            std::process::id()
        ));
        let io = |source| SnapshotError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::create(&path).map_err(io)?;
        Ok(SpoolWriter {
            out: BufWriter::new(file),
            spool: Spool { path },
        })
    }

    /// Appends one encoded chunk, after checking that it decodes.
    pub fn push_encoded(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        if bytes.len() > MAX_CHUNK_BYTES {
            return Err(SnapshotError::Malformed(format!(
                "a chunk of {} bytes is over the limit of {MAX_CHUNK_BYTES}",
                bytes.len()
            )));
        }
        postcard::from_bytes::<Chunk>(bytes)
            .map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        let io = |source| SnapshotError::Io {
            path: self.spool.path.clone(),
            source,
        };
        self.out
            .write_all(&(bytes.len() as u32).to_be_bytes())
            .map_err(io)?;
        self.out.write_all(bytes).map_err(io)
    }

    /// Flushes the file and returns it as snapshot data.
    pub fn finish(mut self) -> Result<SnapshotData, SnapshotError> {
        let path = self.spool.path.clone();
        self.out
            .flush()
            .map_err(|source| SnapshotError::Io { path, source })?;
        Ok(SnapshotData::Spooled(Arc::new(self.spool)))
    }
}

/// Calls `f` with every chunk of `data`, in order.
pub fn each_chunk(
    data: &SnapshotData,
    mut f: impl FnMut(Chunk) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    match data {
        SnapshotData::Pinned(p) => for_each_chunk(&p.0, &p.1, CHUNK_BYTES, f),
        SnapshotData::Chunks(chunks) => chunks.iter().cloned().try_for_each(f),
        SnapshotData::Spooled(spool) => {
            let io = |source| SnapshotError::Io {
                path: spool.path.clone(),
                source,
            };
            let mut r = BufReader::new(std::fs::File::open(&spool.path).map_err(io)?);
            let mut buf = Vec::new();
            loop {
                let mut len = [0u8; 4];
                match r.read_exact(&mut len) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(io(e)),
                }
                let len = u32::from_be_bytes(len) as usize;
                if len > MAX_CHUNK_BYTES {
                    return Err(SnapshotError::Malformed(format!(
                        "spooled chunk of {len} bytes"
                    )));
                }
                buf.resize(len, 0);
                r.read_exact(&mut buf).map_err(io)?;
                f(postcard::from_bytes(&buf)
                    .map_err(|e| SnapshotError::Malformed(e.to_string()))?)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_gives_back_its_chunks_and_is_removed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = vec![
            Chunk::Names(vec![(1, "a".into()), (2, "b".into())]),
            Chunk::Body(vec![((1, 1), vec![7; 100_000])]),
            Chunk::System(vec![]),
        ];
        let mut w = SpoolWriter::create(dir.path(), 3).unwrap();
        for c in &chunks {
            w.push_encoded(&postcard::to_allocvec(c).unwrap()).unwrap();
        }
        assert!(matches!(
            w.push_encoded(b"\xff\xff garbage"),
            Err(SnapshotError::Malformed(_))
        ));
        let data = w.finish().unwrap();
        let mut back = Vec::new();
        each_chunk(&data, |c| {
            back.push(c);
            Ok(())
        })
        .unwrap();
        assert_eq!(back, chunks);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(data);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn spools_left_by_a_crash_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let w = SpoolWriter::create(dir.path(), 2).unwrap();
        // A crash: the writer's file stays behind.
        std::mem::forget(w);
        std::fs::write(dir.path().join("shard-0002.redb"), b"keep").unwrap();
        std::fs::write(dir.path().join("notes.snap"), b"keep").unwrap();
        remove_stale_spools(dir.path());
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["notes.snap", "shard-0002.redb"]);
    }
}
