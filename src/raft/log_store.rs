//! The Raft log and vote of one shard: append-only segment files in a directory of their
//! own (`shard-NNNN.log/`).
//!
//! - `NNNNNNNNNNNNNNNNNNNN.seg`, named by the index of its first entry, holds consecutive
//!   entries as records: `[len u32][crc32 u32][index u64][postcard(Entry), len bytes]`, little
//!   endian, the checksum over the index and the entry. A new segment starts when the active
//!   one has passed [`SEGMENT_BYTES`].
//! - `meta` holds the vote and the last purged log id: `[crc32 u32][postcard(Meta)]`, replaced
//!   as a whole (written to `meta.tmp`, synced, renamed, directory synced).
//!
//! Appends go to a dedicated writer thread: `append` puts the entries in memory
//! ([`Recent`], readable at once, as openraft requires) and returns; the writer takes every
//! append waiting for it, writes all their records with one `pwrite` and one `fdatasync`
//! (group commit), and only then reports the flush to openraft: an entry is never
//! acknowledged before it is on disk, and the Raft core goes on while the disk syncs.
//! Purges and truncations go through the same writer, in order with the appends. A purge
//! records the new start of the log in `meta` before it deletes whole segments below it;
//! the writer hands that work (two fsyncs, and renaming the segments to `.trash` for
//! [`crate::store::reclaim`] to free gradually) to a purge thread of the log's own, so
//! appends do not wait for it. Only a purge past the end of
//! the log (a snapshot installed from the leader) is carried out by the writer itself,
//! since the next append leaves a gap that `meta` must explain first.
//!
//! The log used to be a redb database (`shard-NNNN.log.redb`). A B-tree per log cost a
//! fifth of the node's CPU on the send path: page copies, checksums, free-page bookkeeping
//! and an fsync of all the pages a commit touched. [`import_redb`] moves an old log into
//! the new layout once, when the node starts.
//!
//! Purged segments that were full are kept, up to [`MAX_SPARES`], as `NNNN.spare`, and each
//! new segment is one of them renamed, whose records overwrite its old ones: an
//! `fdatasync` of blocks a file already has is one write, while appending to a new file
//! writes its inode too every time.
//!
//! Recovery reads every segment and checks each record (length, checksum, and the index
//! that position must hold). The last segment ends at its last whole record: what follows
//! is a write torn by a crash (never acknowledged) or old records of a recycled file, and
//! the file is cut there. Every other segment must hold whole records up to the next
//! one's first entry; a record damaged or missing there stops the open.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};

use super::{blocking, Entry, LogId, StorageError, TypeConfig, Vote};

/// A segment is closed and a new one started once it holds this many bytes. Purges delete
/// whole segments, so the log keeps up to this much below the purge point.
pub const SEGMENT_BYTES: u64 = 32 << 20;
/// Capacity of the writer's encoding buffer kept between writes.
const KEEP_BUFFER: usize = 4 << 20;
/// Bytes of a record's header: length, checksum, index.
const HEADER: usize = 16;
/// Longest record recovery accepts; a longer length field is damage (proposals are split
/// at a few MiB).
const MAX_RECORD: u64 = 1 << 30;
const META: &str = "meta";
const META_TMP: &str = "meta.tmp";
const SEGMENT_SUFFIX: &str = ".seg";
/// A purged segment file waiting to be renamed into the next segment and overwritten.
/// Overwriting blocks a file already has makes an `fdatasync` one write: appending to a
/// new file also writes its inode (its size) every time. Measured here, 40 KiB writes:
/// 4,500-4,900 syncs/s appending, 6,800-7,500 overwriting, with 30% less CPU.
const SPARE_SUFFIX: &str = ".spare";
/// Most spare segments a log keeps ([`SPARE_SUFFIX`]). A purge after a snapshot frees
/// every segment below it at once (three at half of workload (a)'s peak on one node,
/// about nine at full load), and the log then writes as many new ones before the next
/// purge: with one spare, most of them were new files. Costs a busy log up to
/// `MAX_SPARES` × [`SEGMENT_BYTES`] (128 MiB) of disk beside its segments.
const MAX_SPARES: usize = 4;

/// What `meta` holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    vote: Option<Vote>,
    purged: Option<LogId>,
}

/// One segment file and where its records are.
struct Segment {
    /// Index of its first entry (also its file name).
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Byte offset of the record of entry `first + i`.
    offsets: Vec<u64>,
    /// Bytes of whole records; the next record goes here.
    len: u64,
}

impl Segment {
    /// A new segment for entries from `first` on: a recycled file (`spare`) renamed, or a
    /// new empty file.
    fn create(dir: &Path, first: u64, spare: Option<PathBuf>) -> io::Result<Segment> {
        let path = segment_path(dir, first);
        let file = match spare {
            // Its old records stay until overwritten; they carry lower indices, so
            // recovery never takes them for entries of this segment.
            Some(spare) => {
                std::fs::rename(&spare, &path)?;
                OpenOptions::new().read(true).write(true).open(&path)?
            }
            None => OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?,
        };
        // The new name must survive a crash before the entries in it are acknowledged.
        sync_dir(dir)?;
        Ok(Segment {
            first,
            path,
            file: Arc::new(file),
            offsets: Vec::new(),
            len: 0,
        })
    }

    /// Index one past its last entry.
    fn next(&self) -> u64 {
        self.first + self.offsets.len() as u64
    }

    fn last(&self) -> Option<u64> {
        (!self.offsets.is_empty()).then(|| self.next() - 1)
    }

    /// Where entries `from..to` (all in this segment) lie.
    fn run(&self, from: u64, to: u64) -> io::Result<Run> {
        let k = |i: u64| usize::try_from(i - self.first).map_err(io::Error::other);
        let (a, b) = (k(from)?, k(to)?);
        Ok(Run {
            file: self.file.clone(),
            path: self.path.clone(),
            first: from,
            count: b - a,
            start: self.offsets[a],
            end: self.offsets.get(b).copied().unwrap_or(self.len),
        })
    }

    /// Reads and decodes entry `index`, which must be in this segment.
    fn read(&self, index: u64) -> io::Result<Entry> {
        let mut out = Vec::with_capacity(1);
        self.run(index, index + 1)?.read(&mut out)?;
        out.pop()
            .ok_or_else(|| io::Error::other("an empty read of one entry"))
    }
}

/// The segments on disk, oldest first, and the id of the last entry in them.
struct Disk {
    dir: PathBuf,
    segs: VecDeque<Segment>,
    last: Option<LogId>,
    /// Purged segment files kept for the next segments to overwrite (see
    /// [`SPARE_SUFFIX`]), at most [`MAX_SPARES`].
    spares: Vec<PathBuf>,
    segment_bytes: u64,
}

impl Disk {
    fn segment_of(&self, index: u64) -> Option<&Segment> {
        self.segs
            .iter()
            .rev()
            .find(|s| s.first <= index)
            .filter(|s| index < s.next())
    }

    /// Removes segment files from the front while every entry in them is at or below
    /// `index`.
    fn drop_through(&mut self, index: u64) -> io::Result<()> {
        for (path, _) in self.detach_through(index)? {
            std::fs::remove_file(&path)?;
        }
        Ok(())
    }

    /// Takes the segments that [`Disk::drop_through`] removes out of the log, and returns
    /// the files still to delete with their handles, so that the caller can delete them
    /// without holding the lock (unlinking a 32 MiB file takes milliseconds).
    fn detach_through(&mut self, index: u64) -> io::Result<Vec<(PathBuf, Arc<File>)>> {
        let mut doomed = Vec::new();
        while let Some(s) = self.segs.front() {
            if s.last().is_some_and(|l| l > index) || (s.offsets.is_empty() && s.first > index) {
                break;
            }
            // A full segment is kept for a next segment to overwrite.
            if self.spares.len() < MAX_SPARES && s.len >= self.segment_bytes {
                let spare = self.dir.join(format!("{:020}{SPARE_SUFFIX}", s.first));
                std::fs::rename(&s.path, &spare)?;
                self.spares.push(spare);
            } else {
                doomed.push((s.path.clone(), s.file.clone()));
            }
            self.segs.pop_front();
        }
        if self.last.is_some_and(|l| l.index <= index) && self.segs.is_empty() {
            self.last = None;
        }
        Ok(doomed)
    }

    /// Removes every entry at or above `index`, durably.
    fn truncate(&mut self, index: u64) -> io::Result<()> {
        while let Some(s) = self.segs.back() {
            if s.first < index {
                break;
            }
            std::fs::remove_file(&s.path)?;
            self.segs.pop_back();
        }
        if let Some(s) = self.segs.back_mut() {
            if s.next() > index {
                let k = usize::try_from(index - s.first).map_err(io::Error::other)?;
                let at = s.offsets[k];
                s.file.set_len(at)?;
                s.file.sync_all()?;
                s.offsets.truncate(k);
                s.len = at;
            }
        }
        sync_dir(&self.dir)?;
        self.last = match self.segs.back() {
            Some(s) => match s.last() {
                Some(l) => Some(s.read(l)?.log_id),
                None => None,
            },
            None => None,
        };
        Ok(())
    }

    /// Makes records just written at `at` in the active segment readable: their offsets
    /// (`rel`, relative to `at`), the `bytes` they span and the id of the last one.
    fn publish(
        &mut self,
        at: u64,
        rel: &[u64],
        bytes: usize,
        last: Option<LogId>,
    ) -> io::Result<()> {
        let seg = self
            .segs
            .back_mut()
            .ok_or_else(|| io::Error::other("no active segment"))?;
        seg.offsets.extend(rel.iter().map(|o| at + o));
        seg.len = at + bytes as u64;
        self.last = last;
        Ok(())
    }

    /// The segment the next record, of entry `index`, goes to: the active one, or a new
    /// one when the active one is full or `index` follows a purge beyond it.
    fn active_for(&mut self, index: u64, purged: Option<u64>) -> io::Result<&mut Segment> {
        // An empty segment left by a truncation or a torn first write, named for another
        // index, makes way.
        if let Some(s) = self.segs.back() {
            if s.offsets.is_empty() && s.first != index {
                std::fs::remove_file(&s.path)?;
                self.segs.pop_back();
            }
        }
        let start_new = match self.segs.back() {
            None => true,
            Some(s) if s.offsets.is_empty() => false,
            Some(s) if s.next() == index => s.len >= self.segment_bytes,
            Some(s) => {
                // Only a purge past the end of the log (a snapshot installed) makes a gap.
                let next = s.next();
                if index < next || purged.is_none_or(|p| p + 1 < index) {
                    return Err(io::Error::other(format!(
                        "append of entry {index} does not follow the log, which ends before {next}"
                    )));
                }
                true
            }
        };
        if start_new {
            let seg = Segment::create(&self.dir, index, self.spares.pop())?;
            self.segs.push_back(seg);
        }
        self.segs
            .back_mut()
            .ok_or_else(|| io::Error::other("no active segment"))
    }
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}{SEGMENT_SUFFIX}"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Appends `entries` as records to `buf`, returning each record's offset from where the
/// first one starts (the length `buf` had).
fn encode(entries: &[&Entry], buf: &mut Vec<u8>) -> io::Result<Vec<u64>> {
    let base = buf.len();
    let mut offsets = Vec::with_capacity(entries.len());
    for e in entries {
        let start = buf.len();
        offsets.push((start - base) as u64);
        buf.extend_from_slice(&[0; HEADER]);
        crate::protocol::shared::append_postcard(*e, buf).map_err(io::Error::other)?;
        let len = u32::try_from(buf.len() - start - HEADER)
            .map_err(|_| io::Error::other("a log entry over 4 GiB"))?;
        buf[start + 8..start + HEADER].copy_from_slice(&e.log_id.index.to_le_bytes());
        let crc = crc32fast::hash(&buf[start + 8..]);
        buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
    Ok(offsets)
}

/// Reads a segment file, returning the offsets of its whole records, the length they
/// span, and the bytes after them that are not the zeros padding a direct write's last
/// block. Stops at the first record that is cut short, fails its checksum or does not
/// carry the next index.
fn scan(path: &Path, first: u64) -> io::Result<(Vec<u64>, u64, u64)> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let mut offsets = Vec::new();
    let mut pos = 0usize;
    while let Some(end) = record_at(&data, pos, first + offsets.len() as u64) {
        offsets.push(pos as u64);
        pos = end;
    }
    let rest = &data[pos..];
    let padding = rest.len() < BLOCK && rest.iter().all(|&b| b == 0);
    Ok((
        offsets,
        pos as u64,
        if padding { 0 } else { rest.len() as u64 },
    ))
}

/// Checks the record at `pos` in `data`: whole, under [`MAX_RECORD`], for entry `index`,
/// and matching its checksum. Returns where it ends.
fn record_at(data: &[u8], pos: usize, index: u64) -> Option<usize> {
    let h = data.get(pos..pos.checked_add(HEADER)?)?;
    let le4 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let len = u64::from(le4(&h[0..4]));
    let crc = le4(&h[4..8]);
    let mut idx = [0u8; 8];
    idx.copy_from_slice(&h[8..16]);
    if len > MAX_RECORD || u64::from_le_bytes(idx) != index {
        return None;
    }
    let end = pos + HEADER + usize::try_from(len).ok()?;
    let checked = data.get(pos + 8..end)?;
    (crc32fast::hash(checked) == crc).then_some(end)
}

/// Consecutive entries of one segment, located under the lock and read without it.
struct Run {
    file: Arc<File>,
    path: PathBuf,
    first: u64,
    count: usize,
    start: u64,
    end: u64,
}

impl Run {
    /// Reads the run with one `pread` and decodes it. Every record is checked again: a
    /// purge or truncation between locating and reading shows as a record that is not the
    /// one expected, and is an error, never a wrong entry.
    fn read(&self, out: &mut Vec<Entry>) -> io::Result<()> {
        let mut buf = vec![0; usize::try_from(self.end - self.start).map_err(io::Error::other)?];
        self.file.read_exact_at(&mut buf, self.start)?;
        let mut pos = 0;
        for k in 0..self.count {
            let index = self.first + k as u64;
            let end = record_at(&buf, pos, index).ok_or_else(|| {
                io::Error::other(format!(
                    "{}: entry {index} changed while being read (purged or truncated)",
                    self.path.display()
                ))
            })?;
            let entry = postcard::from_bytes(&buf[pos + HEADER..end]).map_err(|e| {
                io::Error::other(format!(
                    "{}: entry {index} does not decode: {e}",
                    self.path.display()
                ))
            })?;
            out.push(entry);
            pos = end;
        }
        Ok(())
    }
}

/// The vote and purge point: in memory for readers, and the `meta` file. Rewriting the
/// file takes three fsyncs; writers take turns on `file` for that, and readers, which
/// only lock `current` for a copy, never wait for the disk (openraft's core reads the
/// purge point on the async runtime).
struct MetaStore {
    dir: PathBuf,
    current: Mutex<Meta>,
    file: Mutex<()>,
}

impl MetaStore {
    fn get(&self) -> Meta {
        *lock(&self.current)
    }

    /// Applies `change` to the current value and, if it says so, writes the result to the
    /// file before anyone reads it.
    fn update(&self, change: impl FnOnce(&mut Meta) -> bool) -> io::Result<()> {
        let _turn = lock(&self.file);
        let mut new = self.get();
        if change(&mut new) {
            write_meta(&self.dir, &new)?;
            *lock(&self.current) = new;
        }
        Ok(())
    }
}

fn read_meta(dir: &Path) -> io::Result<Meta> {
    let path = dir.join(META);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Meta::default()),
        Err(e) => return Err(e),
    };
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: the vote and purge record is damaged (checksum or format)",
                path.display()
            ),
        )
    };
    let (crc, body) = (
        data.get(..4).ok_or_else(bad)?,
        data.get(4..).ok_or_else(bad)?,
    );
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(bad());
    }
    postcard::from_bytes(body).map_err(|_| bad())
}

fn write_meta(dir: &Path, meta: &Meta) -> io::Result<()> {
    let body = postcard::to_allocvec(meta).map_err(io::Error::other)?;
    let mut data = crc32fast::hash(&body).to_le_bytes().to_vec();
    data.extend_from_slice(&body);
    let tmp = dir.join(META_TMP);
    {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all_at(&data, 0)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(META))?;
    sync_dir(dir)
}

/// Opens the segments of `dir`, cutting the last one after its last whole record, and
/// deletes those a recorded purge covers.
fn recover(dir: &Path, purged: Option<u64>, segment_bytes: u64) -> io::Result<Disk> {
    let mut firsts = Vec::new();
    let mut spares = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if crate::store::reclaim::is_trash(&name) {
            // Left by a crash before a purged segment was deleted (or being deleted now).
            crate::store::reclaim::remove(&dir.join(&*name))?;
        } else if name.ends_with(SPARE_SUFFIX) {
            let path = dir.join(&*name);
            if spares.len() < MAX_SPARES {
                spares.push(path);
            } else {
                std::fs::remove_file(&path)?;
            }
        } else if let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) {
            let first = stem.parse::<u64>().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: a segment file whose name is not an index",
                        dir.join(&*name).display()
                    ),
                )
            })?;
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    let mut disk = Disk {
        dir: dir.to_path_buf(),
        segs: VecDeque::new(),
        last: None,
        spares,
        segment_bytes,
    };
    let count = firsts.len();
    for (i, first) in firsts.into_iter().enumerate() {
        let path = segment_path(dir, first);
        let (offsets, len, junk) = scan(&path, first)?;
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        // Bytes after the last whole record: old records of a recycled file, or a write
        // torn by a crash (never acknowledged). The last segment is cut there, so that a
        // torn write's whole records can never line up behind new ones; a segment before
        // it keeps them (its entries must reach the next segment, checked below).
        if junk > 0 && i + 1 == count {
            tracing::info!(
                file = %path.display(),
                kept = len,
                cut = junk,
                "cut the last log segment after its last whole record"
            );
            file.set_len(len)?;
            file.sync_all()?;
        }
        if let Some(prev) = disk.segs.back() {
            // Segments follow each other, except below a purge (a snapshot installed past
            // the end of the log).
            if prev.next() != first && purged.is_none_or(|p| p + 1 < first) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: the record of entry {} at byte {} is damaged or missing (the next segment starts at entry {first})",
                        prev.path.display(),
                        prev.next(),
                        prev.len,
                    ),
                ));
            }
        }
        disk.segs.push_back(Segment {
            first,
            path,
            file: Arc::new(file),
            offsets,
            len,
        });
    }
    // A segment is created only to be written at once, so only the last can be empty (a
    // crash in between); `active_for` reuses or replaces it. An empty one before it would
    // have failed the check above unless a purge covers it, and then it goes here.
    if let Some(p) = purged {
        disk.drop_through(p)?;
    }
    disk.last = match disk
        .segs
        .iter()
        .rev()
        .find_map(|s| s.last().map(|l| (s, l)))
    {
        Some((s, l)) => Some(s.read(l)?.log_id),
        None => None,
    };
    Ok(disk)
}

/// A shard's Raft log. Cheap to clone; clones share the files.
#[derive(Clone)]
pub struct LogStore {
    disk: Arc<Mutex<Disk>>,
    meta: Arc<MetaStore>,
    /// Where the writer records how long each write took, once set (see [`LogStore::time_writes`]).
    write_times: Arc<OnceLock<Histogram>>,
    /// Index of the last entry known committed (0 before any), kept in memory for status
    /// reports: openraft learns it again from the leader after a restart.
    committed: Arc<AtomicU64>,
    /// Index of the last entry the state machine has applied (0 before any): written
    /// entries up to it leave memory (see [`Recent`]).
    applied: Arc<AtomicU64>,
    writer: Arc<Writer>,
    /// Appends handed to the writer and not yet written (see [`WritesPending`]).
    pending: Arc<WritesPending>,
}

/// How many appends a log's writer has in hand (handed over, not yet written and synced),
/// with a signal when none is left. The proposer reads it to hold a small proposal back
/// while the writer is busy (see `raft::proposer`).
///
/// With a linger set ([`WritesPending::set_linger`], the `log_linger_us` setting), the
/// writer also *rests* after a small write (fewer than [`REST_BELOW`] messages) that began
/// less than the linger before, when the proposer holds a proposal back for it: it counts
/// as busy until the linger after that write began, or until an append arrives, so the
/// held proposal takes along the commands arriving meanwhile. The proposer ends the rest
/// early by sending the proposal on once it carries
/// [`WAKES_WRITER`](super::proposer::WAKES_WRITER) messages. Fewer, larger writes cost less
/// CPU and disk work at moderate load, and each send waits up to the linger more; a client
/// that waits for each answer sends fewer messages a second (docs/BENCHMARKS.md, "The
/// host's pauses every 100 ms").
#[derive(Debug, Default)]
pub struct WritesPending {
    count: AtomicUsize,
    /// The writer rests (see above).
    resting: AtomicBool,
    /// The proposer holds a proposal back until the writer is idle.
    holding: AtomicBool,
    /// The linger in microseconds; 0: the writer never rests.
    linger_us: AtomicU64,
    idle: tokio::sync::Notify,
}

/// Longest linger accepted, in microseconds.
pub const MAX_LINGER_US: u64 = 10_000;

/// Messages a write must carry (as the proposer counts them) for the writer not to rest
/// after it: at full load each write carries more, and resting would only delay the next.
pub const REST_BELOW: usize = 128;

impl WritesPending {
    /// Whether the writer has appends in hand or rests.
    pub fn busy(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0 || self.resting()
    }

    /// Whether the writer rests after a write, with nothing in hand: an append handed over
    /// now is written at once.
    pub fn resting(&self) -> bool {
        self.resting.load(Ordering::Acquire)
    }

    /// Completes once the writer has no append left in hand and does not rest, if created
    /// (and enabled) before [`WritesPending::busy`] was read.
    pub fn idle(&self) -> tokio::sync::futures::Notified<'_> {
        self.idle.notified()
    }

    /// Sets the linger in microseconds (see above; at most [`MAX_LINGER_US`]; zero turns
    /// resting off).
    pub fn set_linger(&self, us: u64) {
        self.linger_us
            .store(us.min(MAX_LINGER_US), Ordering::Release);
    }

    fn linger(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.linger_us.load(Ordering::Acquire))
    }

    /// Tells the writer whether the proposer holds a proposal back for it.
    pub fn set_holding(&self, holding: bool) {
        self.holding.store(holding, Ordering::Release);
    }

    fn holding(&self) -> bool {
        self.holding.load(Ordering::Acquire)
    }

    fn add(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    fn done(&self, n: usize) {
        if n > 0 && self.count.fetch_sub(n, Ordering::AcqRel) == n && !self.resting() {
            self.idle.notify_waiters();
        }
    }

    fn rest(&self, resting: bool) {
        self.resting.store(resting, Ordering::Release);
    }

    /// Ends a rest, and signals idle if nothing is in hand.
    fn wake(&self) {
        self.resting.store(false, Ordering::Release);
        if self.count.load(Ordering::Acquire) == 0 {
            self.idle.notify_waiters();
        }
    }
}

/// Bytes of written entries (as encoded) a log keeps in memory for the state machine and
/// replication to read back, beyond which the oldest are dropped even if not yet applied.
const RECENT_BYTES: usize = 8 << 20;

/// The entries a log keeps in memory, by index, consecutive: those handed to `append` and
/// not yet written by the writer, then the written ones until the state machine has
/// applied them (at most [`RECENT_BYTES`] of those). Openraft reads each committed entry
/// back to apply it, right after it is written; kept here, that read costs neither a
/// `pread`, a decode, nor a hop to a blocking thread. Shared with the writer (`Arc`): an
/// append costs no deep copy of its commands.
#[derive(Default)]
struct Recent {
    entries: BTreeMap<u64, Arc<Entry>>,
    /// Index and encoded size of each written entry still kept, oldest first.
    written: VecDeque<(u64, usize)>,
    /// Sum of the sizes in `written`.
    written_bytes: usize,
}

impl Recent {
    /// Records that the entries from `first` on, of encoded `sizes`, are on disk, then
    /// drops the written entries up to `applied` and the oldest beyond [`RECENT_BYTES`].
    fn written(&mut self, first: u64, sizes: &[usize], applied: u64) {
        for (i, size) in (first..).zip(sizes) {
            self.written.push_back((i, *size));
            self.written_bytes += size;
        }
        self.applied(applied);
        while self.written_bytes > RECENT_BYTES {
            self.forget_oldest_written();
        }
    }

    /// Drops the written entries up to `index`, which the state machine has applied.
    fn applied(&mut self, index: u64) {
        while self.written.front().is_some_and(|&(i, _)| i <= index) {
            self.forget_oldest_written();
        }
    }

    fn forget_oldest_written(&mut self) {
        if let Some((i, size)) = self.written.pop_front() {
            self.written_bytes -= size;
            self.entries.remove(&i);
        }
    }

    /// Drops every entry up to `index`, written or not (a purge).
    fn forget_through(&mut self, index: u64) {
        self.applied(index);
        self.entries = self.entries.split_off(&index.saturating_add(1));
    }

    /// Drops every entry from `index` on (a truncation).
    fn truncate(&mut self, index: u64) {
        self.entries.split_off(&index);
        while self.written.back().is_some_and(|&(i, _)| i >= index) {
            if let Some((_, size)) = self.written.pop_back() {
                self.written_bytes -= size;
            }
        }
    }
}

type SharedRecent = Arc<Mutex<Recent>>;

/// Where a state machine tells its log which entries it has applied: the log keeps written
/// entries in memory until then (see [`Recent`]). Cheap to clone.
#[derive(Clone)]
pub struct AppliedIndex {
    index: Arc<AtomicU64>,
    recent: SharedRecent,
}

impl AppliedIndex {
    /// Records that every entry up to `index` is applied, and lets the written ones go.
    pub fn set(&self, index: u64) {
        self.index.fetch_max(index, Ordering::AcqRel);
        lock(&self.recent).applied(index);
    }

    /// The last index recorded (0 before any).
    pub fn get(&self) -> u64 {
        self.index.load(Ordering::Acquire)
    }
}

/// Called once an append is on disk (or failed): openraft's flush callback.
type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

enum WriteOp {
    Append(Vec<Arc<Entry>>, Done),
    /// Answered once every earlier operation is done (tests wait on it).
    #[cfg(test)]
    Barrier(tokio::sync::oneshot::Sender<()>),
    /// Entries up to this one may go: recorded in `meta`, then whole segments deleted.
    Purge(LogId),
    /// Entries from this index on are removed.
    Truncate(u64, tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// What the purge thread works on, handed over by the writer in log order.
enum PurgeOp {
    /// Record this purge in `meta`, then delete the segments it covers.
    Purge(LogId),
    /// Answered once every earlier purge is done.
    #[cfg(test)]
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// The log's writer thread and its purge thread. Dropping the last handle closes the
/// writer's channel and joins both threads (the writer's end closes the purger's channel),
/// so the files are closed when the store is.
struct Writer {
    tx: Mutex<Option<mpsc::Sender<WriteOp>>>,
    recent: SharedRecent,
    /// The newest purge handed to the writer (it may not be recorded on disk yet).
    purged: Mutex<Option<LogId>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    purger: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        for thread in [&self.thread, &self.purger] {
            if let Some(t) = thread.lock().unwrap_or_else(PoisonError::into_inner).take() {
                let _ = t.join();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Writer {
    fn start(state: WriterState, purges: mpsc::Receiver<PurgeOp>) -> io::Result<Writer> {
        let (tx, rx) = mpsc::channel();
        let recent = state.recent.clone();
        let purged = state.meta.get().purged;
        let (disk, meta) = (state.disk.clone(), state.meta.clone());
        let purger = std::thread::Builder::new()
            .name("mqd-log-purge".into())
            .spawn(move || purge_thread(&disk, &meta, &purges))?;
        let thread = std::thread::Builder::new()
            .name("mqd-log-writer".into())
            .spawn(move || state.run(&rx))?;
        Ok(Writer {
            tx: Mutex::new(Some(tx)),
            recent,
            purged: Mutex::new(purged),
            thread: Mutex::new(Some(thread)),
            purger: Mutex::new(Some(purger)),
        })
    }

    fn send(&self, op: WriteOp) -> Result<(), StorageError> {
        let tx = lock(&self.tx);
        match tx.as_ref().map(|tx| tx.send(op)) {
            Some(Ok(())) => Ok(()),
            _ => Err(write_err(io::Error::other("the log writer has stopped"))),
        }
    }

    /// Waits until every operation sent so far is done.
    #[cfg(test)]
    async fn drain(&self) -> Result<(), StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(WriteOp::Barrier(tx))?;
        rx.await
            .map_err(|_| write_err(io::Error::other("the log writer has stopped")))
    }
}

/// What the writer thread works on.
struct WriterState {
    disk: Arc<Mutex<Disk>>,
    meta: Arc<MetaStore>,
    write_times: Arc<OnceLock<Histogram>>,
    recent: SharedRecent,
    /// Index of the last entry the state machine has applied (see [`LogStore::applied`]).
    applied: Arc<AtomicU64>,
    /// Reused encoding buffer.
    buf: Vec<u8>,
    /// Appends in hand, counted down as they are written.
    pending: Arc<WritesPending>,
    /// To the purge thread.
    purges: mpsc::Sender<PurgeOp>,
    /// Writes that bypass the page cache, while the file system takes them.
    direct: Option<Direct>,
    /// When the rest after the last write ends, if the writer rests.
    rest_until: Option<Instant>,
}

/// Block size of direct writes: their offset, length and memory must be multiples of it.
const BLOCK: usize = 4096;

/// The log's writes with `O_DIRECT`: the records go from memory to the disk without a copy
/// into the page cache, and the `fdatasync` after them has no dirty pages to write back.
/// Measured on this machine's disk, a 256 KiB write and `fdatasync` took 0.30 ms and
/// 92 µs of CPU this way against 0.63 ms and 384 µs through the page cache (about the
/// same at 64 KiB). A write covers whole blocks, so the last block of the active
/// segment, partly filled, is written again with the records that follow it; after the
/// last record a block is padded with zeros, which recovery reads as the end of the log.
struct Direct {
    /// The active segment, opened with `O_DIRECT`, beside the segment's own handle: a
    /// segment replaced under the same name (after a truncation) has another handle.
    file: Option<(Arc<File>, File)>,
    /// The bytes of the active segment's last, partly written block and where that block
    /// starts, for the segment of that handle. Read again from the file when they do not
    /// match where the next records go.
    tail: Option<(Arc<File>, u64, Vec<u8>)>,
    /// Whole blocks to write, at a block-aligned place inside.
    out: Vec<u8>,
}

impl Direct {
    fn new() -> Direct {
        Direct {
            file: None,
            tail: None,
            out: Vec::new(),
        }
    }

    /// Direct writes, if the file system in `dir` takes them (tmpfs, for one, does not).
    fn probe(dir: &Path) -> Option<Direct> {
        let path = dir.join("direct.probe");
        let mut d = Direct::new();
        let r = open_direct(&path, true).and_then(|f| {
            let (_, skip, _) = d.lay_out(&[], |out| {
                out.extend_from_slice(b"probe");
                Ok(())
            })?;
            f.write_all_at(&d.out[skip..], 0)
        });
        let _ = std::fs::remove_file(&path);
        match r {
            Ok(()) => Some(d),
            Err(e) => {
                tracing::info!(dir = %dir.display(), error = %e, "the file system refuses O_DIRECT: the Raft log is written through the page cache");
                None
            }
        }
    }

    /// Lays out in `out`, from a block-aligned place, `head` (the start of a block already
    /// on disk), then what `fill` appends, then zeros to the end of the last block. Returns
    /// what `fill` returned, where the blocks start in `out`, and the bytes of `head` and
    /// of what `fill` appended, without the zeros. What `fill` appends is
    /// written where it lands, not copied from another buffer, unless it grew `out` into an
    /// allocation aligned otherwise; then the blocks move once to an aligned place.
    fn lay_out<R>(
        &mut self,
        head: &[u8],
        fill: impl FnOnce(&mut Vec<u8>) -> io::Result<R>,
    ) -> io::Result<(R, usize, usize)> {
        let out = &mut self.out;
        out.clear();
        // An allocation first: its address, and so the aligned place in it, holds until
        // the vector grows.
        out.reserve(2 * BLOCK);
        let mut skip = aligned_start(out)?;
        out.resize(skip, 0);
        out.extend_from_slice(head);
        let r = fill(out)?;
        let used = out.len() - skip;
        let padded = used.div_ceil(BLOCK) * BLOCK;
        if aligned_start(out)? != skip || out.capacity() < skip + padded {
            // Grown into another allocation, or no room for the padding: with room for
            // both, the blocks move to where this allocation is aligned.
            out.reserve(2 * BLOCK);
            let to = aligned_start(out)?;
            if to > skip {
                out.resize(to + used, 0);
            }
            out.copy_within(skip..skip + used, to);
            skip = to;
        }
        out.truncate(skip + used);
        out.resize(skip + padded, 0);
        Ok((r, skip, used))
    }

    /// Writes what `fill` appends (see [`Direct::lay_out`]) at byte `at` of the segment
    /// whose handle is `seg` and path is `path`, and syncs it. Returns what `fill` returned
    /// and the length of what it appended.
    fn write<R>(
        &mut self,
        seg: &Arc<File>,
        path: &Path,
        at: u64,
        fill: impl FnOnce(&mut Vec<u8>) -> io::Result<R>,
    ) -> io::Result<(R, usize)> {
        let block = BLOCK as u64;
        let block_at = at - at % block;
        let head_len = usize::try_from(at - block_at).map_err(io::Error::other)?;
        let head = match self.tail.take() {
            Some((f, b, bytes))
                if Arc::ptr_eq(&f, seg) && b == block_at && bytes.len() == head_len =>
            {
                bytes
            }
            _ => {
                let mut bytes = vec![0; head_len];
                seg.read_exact_at(&mut bytes, block_at)?;
                bytes
            }
        };
        let file = match self.file.take() {
            Some((f, direct)) if Arc::ptr_eq(&f, seg) => direct,
            _ => open_direct(path, false)?,
        };
        let (r, skip, used) = self.lay_out(&head, fill)?;
        let len = used - head_len;
        let end = at + len as u64;
        let tail_at = end - end % block;
        let tail_from = skip + usize::try_from(tail_at - block_at).map_err(io::Error::other)?;
        // The head's buffer, no longer needed, takes the new tail: no allocation per write.
        let mut tail = head;
        tail.clear();
        tail.extend_from_slice(&self.out[tail_from..skip + used]);
        file.write_all_at(&self.out[skip..], block_at)?;
        file.sync_data()?;
        self.file = Some((seg.clone(), file));
        self.tail = Some((seg.clone(), tail_at, tail));
        // Like the encoding buffer, a run of large proposals does not leave its size behind.
        if self.out.capacity() > KEEP_BUFFER {
            self.out = Vec::new();
        }
        Ok((r, len))
    }
}

/// Where a block-aligned place starts in `out`'s allocation.
fn aligned_start(out: &[u8]) -> io::Result<usize> {
    match out.as_ptr().align_offset(BLOCK) {
        skip if skip < BLOCK => Ok(skip),
        _ => Err(io::Error::other("no aligned place in the write buffer")),
    }
}

/// Opens `path` for direct writes.
fn open_direct(path: &Path, create: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create(create)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// The purge thread: carries out the purges the writer hands over, in order; of several
/// waiting, only the newest (it covers the others).
fn purge_thread(disk: &Mutex<Disk>, meta: &MetaStore, rx: &mpsc::Receiver<PurgeOp>) {
    while let Ok(op) = rx.recv() {
        let mut newest: Option<LogId> = None;
        #[cfg(test)]
        let mut barriers = Vec::new();
        for op in std::iter::once(op).chain(rx.try_iter()) {
            match op {
                PurgeOp::Purge(to) => {
                    if newest.is_none_or(|n| n.index < to.index) {
                        newest = Some(to);
                    }
                }
                #[cfg(test)]
                PurgeOp::Barrier(done) => barriers.push(done),
            }
        }
        if let Some(to) = newest {
            if let Err(e) = purge_files(disk, meta, to) {
                tracing::error!(error = %e, "purging the Raft log failed");
            }
        }
        #[cfg(test)]
        for done in barriers {
            let _ = done.send(());
        }
    }
}

/// Records in `meta` that the log starts after `to`, then deletes the segments below it.
/// Files are deleted outside the lock; a crash in between leaves files that `meta` says
/// are purged, which the next open deletes.
fn purge_files(disk: &Mutex<Disk>, meta: &MetaStore, to: LogId) -> io::Result<()> {
    // Recorded before any file goes: the log never looks as if it had a hole.
    meta.update(|m| {
        let newer = m.purged.is_none_or(|p| p.index < to.index);
        if newer {
            m.purged = Some(to);
        }
        newer
    })?;
    let doomed = lock(disk).detach_through(to.index)?;
    for (path, file) in doomed {
        // Renamed now, its blocks freed a few MiB at a time by another thread: one unlink
        // of 32 MiB held the writer's next fdatasync for 10 ms (see `reclaim`). A crash
        // leaves either a segment below the purge or a `.trash` file; the next open
        // deletes both.
        crate::store::reclaim::delete(&path, file)?;
    }
    Ok(())
}

/// Messages the entries of `appends` carry, as the proposer counts them.
fn messages(appends: &[(Vec<Arc<Entry>>, Done)]) -> usize {
    appends
        .iter()
        .flat_map(|(es, _)| es.iter())
        .map(|e| match &e.payload {
            openraft::EntryPayload::Normal(p) => {
                p.cmds.iter().map(super::proposer::written).sum::<usize>()
            }
            _ => 0,
        })
        .sum()
}

impl WriterState {
    /// Takes every operation waiting and carries them out in order, writing each run of
    /// appends with one write and one fdatasync before answering them.
    fn run(mut self, rx: &mpsc::Receiver<WriteOp>) {
        let mut next = rx.recv().ok();
        while let Some(op) = next.take() {
            let mut ops = vec![op];
            while let Ok(op) = rx.try_recv() {
                ops.push(op);
            }
            let mut appends: Vec<(Vec<Arc<Entry>>, Done)> = Vec::new();
            for op in ops {
                match op {
                    WriteOp::Append(es, cb) => appends.push((es, cb)),
                    other => {
                        self.flush(std::mem::take(&mut appends));
                        self.other(other);
                    }
                }
            }
            self.flush(appends);
            // Rests (see `WritesPending`) until the linger after the last write began, unless
            // something arrives first.
            next = match self.rest_until.take() {
                Some(until) => {
                    let r = rx.recv_timeout(until.saturating_duration_since(Instant::now()));
                    self.pending.wake();
                    match r {
                        Ok(op) => Some(op),
                        Err(mpsc::RecvTimeoutError::Timeout) => rx.recv().ok(),
                        Err(mpsc::RecvTimeoutError::Disconnected) => None,
                    }
                }
                None => rx.recv().ok(),
            };
        }
    }

    fn flush(&mut self, appends: Vec<(Vec<Arc<Entry>>, Done)>) {
        if appends.is_empty() {
            return;
        }
        let entries: Vec<&Entry> = appends
            .iter()
            .flat_map(|(es, _)| es.iter().map(|e| &**e))
            .collect();
        let started = Instant::now();
        let r = self.write(&entries);
        if let Some(h) = self.write_times.get() {
            h.observe(started.elapsed().as_secs_f64());
        }
        if let Err(e) = &r {
            tracing::error!(error = %e, "writing the Raft log failed");
        }
        if let (Ok(sizes), Some(first)) = (&r, entries.first()) {
            lock(&self.recent).written(
                first.log_id.index,
                sizes,
                self.applied.load(Ordering::Acquire),
            );
        }
        drop(entries);
        // Whether to rest after this write: decided before the count goes down, so that
        // a proposal held back for the writer keeps waiting through the rest.
        let linger = self.pending.linger();
        let rest = !linger.is_zero()
            && self.pending.holding()
            && started.elapsed() < linger
            && messages(&appends) < REST_BELOW;
        self.pending.rest(rest);
        self.rest_until = rest.then(|| started + linger);
        // Counted down before the callbacks: a proposal held back for the writer can be on
        // its way while openraft learns of this write.
        self.pending.done(appends.len());
        // The flush is reported only after the data is durable (or failed), in order.
        for (_, done) in appends {
            done(match &r {
                Ok(_) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
    }

    /// Writes `entries` (consecutive) at the end of the log and syncs them, returning the
    /// size of each one's record.
    fn write(&mut self, entries: &[&Entry]) -> io::Result<Vec<usize>> {
        let Some(first) = entries.first().map(|e| e.log_id.index) else {
            return Ok(Vec::new());
        };
        if entries
            .windows(2)
            .any(|w| w[1].log_id.index != w[0].log_id.index + 1)
        {
            return Err(io::Error::other("appended entries are not consecutive"));
        }
        let purged = self.meta.get().purged.map(|p| p.index);
        // The active segment is only written here, so its file and length can be used
        // without the lock; readers see the new records once their offsets are added.
        let (file, at, path) = {
            let mut disk = lock(&self.disk);
            let seg = disk.active_for(first, purged)?;
            (seg.file.clone(), seg.len, seg.path.clone())
        };
        // With direct writes the records are encoded straight into the aligned blocks.
        let (rel, len) = match &mut self.direct {
            Some(d) => d.write(&file, &path, at, |out| encode(entries, out))?,
            None => {
                self.buf.clear();
                let rel = encode(entries, &mut self.buf)?;
                file.write_all_at(&self.buf, at)?;
                file.sync_data()?;
                let len = self.buf.len();
                // A run of large proposals can take tens of MiB; a group does not keep that.
                if self.buf.capacity() > KEEP_BUFFER {
                    self.buf = Vec::new();
                }
                (rel, len)
            }
        };
        lock(&self.disk).publish(at, &rel, len, entries.last().map(|e| e.log_id))?;
        let sizes = rel
            .iter()
            .zip(rel.iter().skip(1).chain([&(len as u64)]))
            .map(|(a, b)| (b - a) as usize)
            .collect();
        Ok(sizes)
    }

    fn other(&mut self, op: WriteOp) {
        match op {
            WriteOp::Append(..) => {}
            #[cfg(test)]
            WriteOp::Barrier(done) => {
                // Answered by the purge thread, once the purges before it are done too.
                if let Err(mpsc::SendError(PurgeOp::Barrier(done))) =
                    self.purges.send(PurgeOp::Barrier(done))
                {
                    let _ = done.send(());
                }
            }
            WriteOp::Purge(to) => {
                if let Err(e) = self.purge(to) {
                    tracing::error!(error = %e, "purging the Raft log failed");
                }
            }
            WriteOp::Truncate(index, done) => {
                let r = lock(&self.disk).truncate(index);
                if r.is_ok() {
                    lock(&self.recent).truncate(index);
                }
                let _ = done.send(r.map_err(|e| e.to_string()));
            }
        }
    }

    fn purge(&mut self, to: LogId) -> io::Result<()> {
        lock(&self.recent).forget_through(to.index);
        // Past the end of the log, the next append starts after a gap: record the purge
        // before that append, here. Otherwise the purge thread does it.
        let past_end = lock(&self.disk).last.is_none_or(|l| l.index <= to.index);
        if past_end {
            return purge_files(&self.disk, &self.meta, to);
        }
        if let Err(mpsc::SendError(PurgeOp::Purge(to))) = self.purges.send(PurgeOp::Purge(to)) {
            return purge_files(&self.disk, &self.meta, to);
        }
        Ok(())
    }
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    io::Error::other(format!("reading the Raft log: {e}"))
}
fn write_err(e: impl std::fmt::Display) -> StorageError {
    io::Error::other(format!("writing the Raft log: {e}"))
}

impl LogStore {
    /// Records from now on how long each write (a run of appends: one `pwrite`, one
    /// `fdatasync`) takes, in `h`. Only the first call has an effect.
    pub fn time_writes(&self, h: Histogram) {
        let _ = self.write_times.set(h);
    }

    /// Opens or creates the log in directory `dir`.
    pub fn open(dir: &Path) -> Result<LogStore, StorageError> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    fn open_with(dir: &Path, segment_bytes: u64) -> Result<LogStore, StorageError> {
        std::fs::create_dir_all(dir).map_err(write_err)?;
        let meta = read_meta(dir).map_err(read_err)?;
        let disk = recover(dir, meta.purged.map(|p| p.index), segment_bytes).map_err(read_err)?;
        let disk = Arc::new(Mutex::new(disk));
        let meta = Arc::new(MetaStore {
            dir: dir.to_path_buf(),
            current: Mutex::new(meta),
            file: Mutex::new(()),
        });
        let write_times = Arc::new(OnceLock::new());
        let applied = Arc::new(AtomicU64::new(0));
        let pending = Arc::new(WritesPending::default());
        let (purges, purged_rx) = mpsc::channel();
        let state = WriterState {
            disk: disk.clone(),
            meta: meta.clone(),
            write_times: write_times.clone(),
            recent: SharedRecent::default(),
            applied: applied.clone(),
            buf: Vec::new(),
            pending: pending.clone(),
            purges,
            direct: Direct::probe(dir),
            rest_until: None,
        };
        let writer = Writer::start(state, purged_rx).map_err(write_err)?;
        Ok(LogStore {
            disk,
            meta,
            write_times,
            committed: Arc::default(),
            applied,
            writer: Arc::new(writer),
            pending,
        })
    }

    /// How many appends the writer has in hand, for the proposer.
    pub fn writes_pending(&self) -> Arc<WritesPending> {
        self.pending.clone()
    }

    /// Where the state machine reports the entries it has applied: the log keeps written
    /// entries in memory until then, for openraft to read them back.
    pub fn applied(&self) -> AppliedIndex {
        AppliedIndex {
            index: self.applied.clone(),
            recent: self.writer.recent.clone(),
        }
    }

    /// The committed index as this replica knows it; shared with the clones given to
    /// openraft, so it stays current.
    pub fn committed(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    /// Queues `entries` for the writer; `done` is called once they are on disk.
    fn append_with(
        &self,
        entries: impl IntoIterator<Item = Entry>,
        done: Done,
    ) -> Result<(), StorageError> {
        let entries: Vec<Arc<Entry>> = entries.into_iter().map(Arc::new).collect();
        if entries.is_empty() {
            done(Ok(()));
            return Ok(());
        }
        {
            let mut r = lock(&self.writer.recent);
            for e in &entries {
                r.entries.insert(e.log_id.index, e.clone());
            }
        }
        self.pending.add();
        let sent = self.writer.send(WriteOp::Append(entries, done));
        if sent.is_err() {
            self.pending.done(1);
        }
        sent
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.meta.get().vote)
    }

    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        // Whole segments are deleted, so entries at or below a purge may still be on disk
        // (or, until the writer has carried the purge out, in memory): they are not part of
        // the log any more.
        let after_purge = self
            .meta
            .get()
            .purged
            .max(*lock(&self.writer.purged))
            .map_or(0, |p| p.index + 1);
        let start = match bounds.0 {
            Bound::Included(s) => s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        }
        .max(after_purge);
        let end = match bounds.1 {
            Bound::Included(e) => e.saturating_add(1),
            Bound::Excluded(e) => e,
            Bound::Unbounded => u64::MAX,
        };
        if start >= end {
            return Ok(Vec::new());
        }
        // Memory first, the disk second: an entry leaves memory only after its offsets
        // are published, so between the two reads every entry is seen at least once and
        // the result has no hole.
        let in_memory: Vec<Entry> = lock(&self.writer.recent)
            .entries
            .range(start..end)
            .map(|(_, e)| (**e).clone())
            .collect();
        let first_in_memory = in_memory.first().map_or(u64::MAX, |e| e.log_id.index);
        if first_in_memory == start {
            return Ok(in_memory);
        }
        let disk = self.disk.clone();
        let mut out: Vec<Entry> = blocking(move || {
            // Located under the lock, read without it: the writer publishes new records
            // and rolls segments meanwhile.
            let runs =
                Self::locate(&lock(&disk), start, end.min(first_in_memory)).map_err(read_err)?;
            let mut out = Vec::new();
            for run in &runs {
                run.read(&mut out).map_err(read_err)?;
            }
            Ok(out)
        })
        .await?;
        out.extend(in_memory);
        Ok(out)
    }
}

impl LogStore {
    /// The runs of entries from `start` to before `end` that are on disk.
    fn locate(disk: &Disk, start: u64, end: u64) -> io::Result<Vec<Run>> {
        let end = end.min(disk.segs.back().map_or(0, Segment::next));
        let mut runs = Vec::new();
        let mut i = start;
        while i < end {
            match disk.segment_of(i) {
                Some(s) => {
                    let to = end.min(s.next());
                    runs.push(s.run(i, to)?);
                    i = to;
                }
                // Below a purge, or in the gap a snapshot left: nothing to read there.
                None => match disk.segs.iter().find(|s| s.first > i) {
                    Some(s) => i = s.first,
                    None => break,
                },
            }
        }
        Ok(runs)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        // The newest purge may still be on its way to the disk.
        let last_purged = self.meta.get().purged.max(*lock(&self.writer.purged));
        let last_in_memory = lock(&self.writer.recent)
            .entries
            .last_key_value()
            .map(|(_, e)| e.log_id);
        let last = last_in_memory.or(lock(&self.disk).last).max(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let (meta, vote) = (self.meta.clone(), *vote);
        blocking(move || {
            meta.update(|m| {
                m.vote = Some(vote);
                true
            })
            .map_err(|e| io::Error::other(format!("saving the vote: {e}")))
        })
        .await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(c) = committed {
            self.committed.fetch_max(c.index, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        self.append_with(entries, Box::new(move |r| callback.io_completed(r)))
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), StorageError> {
        // In order with the appends: every append before it is on disk first, so none
        // lands after the truncation.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let from = last.map_or(0, |l| l.index + 1);
        self.writer.send(WriteOp::Truncate(from, tx))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(write_err(io::Error::other(e))),
            Err(_) => Err(write_err(io::Error::other("the log writer has stopped"))),
        }
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The writer records it in `meta`, after every append before it, then deletes the
        // segments it covers (see the module documentation).
        {
            let mut p = lock(&self.writer.purged);
            if p.is_none_or(|old| old.index < log_id.index) {
                *p = Some(log_id);
            }
        }
        self.writer.send(WriteOp::Purge(log_id))
    }
}

/// Every whole record in the segment files of a log directory, oldest first: its entry's
/// log id and the record's checksum, which covers the index and the encoded entry, so that
/// two copies of one entry carry the same checksum. Records below the purge point are
/// listed while their segment is still on disk. For comparing replicas' logs: Raft never
/// lets one log id stand for two entries. The log may be in use: a record still being
/// written fails its checksum and ends that segment's list, and a segment deleted or
/// renamed meanwhile makes the call fail (`NotFound`), to be tried again.
pub fn records_in(dir: &Path) -> io::Result<Vec<(LogId, u32)>> {
    let mut firsts = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        if let Some(stem) = name.to_string_lossy().strip_suffix(SEGMENT_SUFFIX) {
            if let Ok(first) = stem.parse::<u64>() {
                firsts.push(first);
            }
        }
    }
    firsts.sort_unstable();
    let mut out = Vec::new();
    let mut data = Vec::new();
    for first in firsts {
        data.clear();
        File::open(segment_path(dir, first))?.read_to_end(&mut data)?;
        let (mut pos, mut index) = (0, first);
        while let Some(end) = record_at(&data, pos, index) {
            let mut crc = [0u8; 4];
            crc.copy_from_slice(&data[pos + 4..pos + 8]);
            // An entry is encoded with its log id first: only that is decoded.
            let (log_id, _) = postcard::take_from_bytes::<LogId>(&data[pos + HEADER..end])
                .map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: entry {index}: {e}", segment_path(dir, first).display()),
                    )
                })?;
            out.push((log_id, u32::from_le_bytes(crc)));
            (pos, index) = (end, index + 1);
        }
    }
    Ok(out)
}

/// Moves a log kept in a redb database by earlier versions (`old`, `shard-NNNN.log.redb`)
/// into the segment directory `dir`, then deletes `old`. The new directory is built under
/// a temporary name and renamed into place, so a crash in the middle leaves the old file
/// as it was and the import starts again at the next start. If `dir` exists already, the
/// import was finished by a run that stopped before deleting `old`, and only that is left.
pub fn import_redb(old: &Path, dir: &Path) -> Result<(), StorageError> {
    if dir.exists() {
        return std::fs::remove_file(old).map_err(write_err);
    }
    use redb::{ReadableDatabase, TableDefinition};
    const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
    const META_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
    let db = redb::Database::open(old).map_err(read_err)?;
    let txn = db.begin_read().map_err(read_err)?;
    let get = |key: &str| -> Result<Option<Vec<u8>>, StorageError> {
        match txn.open_table(META_TABLE) {
            Ok(t) => Ok(t.get(key).map_err(read_err)?.map(|v| v.value().to_vec())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(read_err(e)),
        }
    };
    let decode_err = |e: postcard::Error| read_err(io::Error::other(e));
    let mut meta = Meta::default();
    if let Some(v) = get("vote")? {
        meta.vote = Some(postcard::from_bytes(&v).map_err(decode_err)?);
    }
    if let Some(v) = get("last_purged")? {
        meta.purged = Some(postcard::from_bytes(&v).map_err(decode_err)?);
    }
    let tmp = dir.with_extension("import");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(write_err)?;
    }
    std::fs::create_dir_all(&tmp).map_err(write_err)?;
    write_meta(&tmp, &meta).map_err(write_err)?;
    let mut disk = recover(&tmp, None, SEGMENT_BYTES).map_err(write_err)?;
    let table = match txn.open_table(LOG) {
        Ok(t) => Some(t),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(read_err(e)),
    };
    let from = meta.purged.map_or(0, |p| p.index + 1);
    let mut imported = 0u64;
    if let Some(t) = table {
        let mut buf = Vec::new();
        for row in t.range(from..).map_err(read_err)? {
            let (_, v) = row.map_err(read_err)?;
            let e: Entry = postcard::from_bytes(v.value()).map_err(decode_err)?;
            buf.clear();
            let rel = encode(&[&e], &mut buf).map_err(write_err)?;
            let seg = disk
                .active_for(e.log_id.index, meta.purged.map(|p| p.index))
                .map_err(write_err)?;
            let at = seg.len;
            seg.file.write_all_at(&buf, at).map_err(write_err)?;
            disk.publish(at, &rel, buf.len(), Some(e.log_id))
                .map_err(write_err)?;
            imported += 1;
        }
    }
    for s in &disk.segs {
        s.file.sync_all().map_err(write_err)?;
    }
    drop(disk);
    std::fs::rename(&tmp, dir).map_err(write_err)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent).map_err(write_err)?;
    }
    drop(txn);
    drop(db);
    std::fs::remove_file(old).map_err(write_err)?;
    tracing::info!(
        from = %old.display(),
        to = %dir.display(),
        entries = imported,
        "moved the Raft log from redb into segment files"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::CommittedLeaderId;
    use openraft::EntryPayload;

    fn id(i: u64) -> LogId {
        LogId::new(
            CommittedLeaderId {
                term: 1,
                node_id: 1,
            },
            i,
        )
    }

    fn blank(i: u64) -> Entry {
        Entry {
            log_id: id(i),
            payload: EntryPayload::Blank,
        }
    }

    /// `store`, keeping no written entry in memory: its reads come from the files.
    fn on_disk(store: LogStore) -> LogStore {
        store.applied().set(u64::MAX);
        store
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    /// Appends through the trait and waits for the flush.
    async fn append(store: &mut LogStore, range: std::ops::RangeInclusive<u64>) {
        try_append(store, range).await.unwrap();
    }

    async fn try_append(
        store: &mut LogStore,
        range: std::ops::RangeInclusive<u64>,
    ) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done: Done = Box::new(move |r| {
            let _ = tx.send(r);
        });
        store.append_with(range.map(blank), done).unwrap();
        rx.await.unwrap()
    }

    async fn indices(store: &mut LogStore) -> Vec<u64> {
        let entries = store.try_get_log_entries(0..u64::MAX).await.unwrap();
        entries.iter().map(|e| e.log_id.index).collect()
    }

    /// A log at `path` with tiny segments (each run of ten entries starts a new one),
    /// holding entries 1 to `runs` × 10, read from the files.
    async fn tens(path: &Path, runs: u64) -> LogStore {
        let mut store = on_disk(LogStore::open_with(path, 64).unwrap());
        for k in 0..runs {
            append(&mut store, k * 10 + 1..=k * 10 + 10).await;
        }
        store
    }

    /// The names of the files in `dir` that end with `suffix`, sorted.
    fn names_ending(dir: &Path, suffix: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(suffix))
            .collect();
        names.sort();
        names
    }

    fn segments(dir: &Path) -> Vec<String> {
        names_ending(dir, SEGMENT_SUFFIX)
    }

    #[test]
    fn records_in_lists_every_entry_and_tells_two_versions_of_one_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
        rt().block_on(async {
            drop(tens(&a, 3).await);
            let mut store = on_disk(LogStore::open_with(&b, 64).unwrap());
            append(&mut store, 1..=29).await;
            // Entry 30 under the same log id as in `a`, but another command.
            let (tx, rx) = tokio::sync::oneshot::channel();
            let other = Entry {
                log_id: id(30),
                payload: EntryPayload::Normal(crate::raft::Proposal::new(7, Vec::new())),
            };
            let done: Done = Box::new(move |r| {
                let _ = tx.send(r);
            });
            store.append_with([other], done).unwrap();
            rx.await.unwrap().unwrap();
        });
        assert!(segments(&a).len() > 1, "the entries span several segments");
        let (ra, rb) = (records_in(&a).unwrap(), records_in(&b).unwrap());
        let ids = |r: &[(LogId, u32)]| r.iter().map(|(l, _)| *l).collect::<Vec<_>>();
        assert_eq!(ids(&ra), (1..=30).map(id).collect::<Vec<_>>());
        assert_eq!(ids(&rb), ids(&ra));
        assert_eq!(
            ra[..29],
            rb[..29],
            "the same entries carry the same checksums"
        );
        assert_eq!(ra[29].0, rb[29].0);
        assert_ne!(ra[29].1, rb[29].1, "two versions of entry 30");
    }

    #[test]
    fn the_writer_counts_the_appends_in_hand_and_signals_when_none_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard-0000.log");
        rt().block_on(async {
            let store = on_disk(LogStore::open(&path).unwrap());
            let pending = store.writes_pending();
            assert!(!pending.busy(), "a new log's writer has nothing in hand");
            let idle = pending.idle();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let mut flushed = Vec::new();
            {
                // The writer needs this lock to write: while the test holds it, both
                // appends stay in hand.
                let _held = lock(&store.disk);
                for range in [1..=3, 4..=4] {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    store
                        .append_with(
                            range.map(blank),
                            Box::new(move |r| {
                                let _ = tx.send(r);
                            }),
                        )
                        .unwrap();
                    flushed.push(rx);
                }
                assert!(pending.busy(), "appends handed over and not yet written");
            }
            tokio::time::timeout(std::time::Duration::from_secs(10), idle)
                .await
                .expect("no signal once both appends were written");
            assert!(!pending.busy());
            for rx in flushed {
                rx.await.unwrap().unwrap();
            }
        });
    }

    /// Appends entry `i` and waits until it is written.
    async fn written(store: &LogStore, i: u64) -> std::time::Duration {
        let started = std::time::Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        store
            .append_with(
                [blank(i)],
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            )
            .unwrap();
        rx.await.unwrap().unwrap();
        started.elapsed()
    }

    #[test]
    fn the_writer_rests_after_a_small_write_while_a_proposal_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard-0000.log");
        let rest = std::time::Duration::from_secs(3);
        rt().block_on(async {
            let store = on_disk(LogStore::open(&path).unwrap());
            let pending = store.writes_pending();
            pending.set_linger(1_000_000);
            assert_eq!(pending.linger().as_micros() as u64, MAX_LINGER_US);
            pending.set_linger(0);
            // No linger: no rest, even with a proposal held.
            pending.set_holding(true);
            written(&store, 1).await;
            assert!(!pending.busy(), "the writer rests with no linger set");
            pending.set_holding(false);
            // Longer than `set_linger` allows, so that a slow disk cannot end the rest first.
            pending
                .linger_us
                .store(rest.as_micros() as u64, Ordering::Release);
            // Nobody holds a proposal back: no rest.
            written(&store, 2).await;
            assert!(!pending.busy(), "the writer rests with no proposal held");

            // One is held: after a write that took less than the rest, the writer counts
            // as busy until the rest is over, then signals idle.
            pending.set_holding(true);
            let took = written(&store, 3).await;
            let idle = pending.idle();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if took < rest {
                assert!(
                    pending.resting() && pending.busy(),
                    "no rest after a quick write"
                );
            }
            tokio::time::timeout(std::time::Duration::from_secs(10), idle)
                .await
                .expect("no idle signal at the end of the rest");
            assert!(!pending.busy());

            // An append ends a rest at once: written well before the rest is over.
            let took = written(&store, 4).await;
            if took < rest {
                assert!(pending.resting());
                let took = written(&store, 5).await;
                assert!(
                    took < rest / 2,
                    "an append waited {took:?} for the rest to end"
                );
            }
            pending.set_holding(false);
            written(&store, 6).await;
            assert!(
                !pending.resting(),
                "rested after a write with no proposal held"
            );
        });
    }

    #[test]
    fn segments_roll_purges_delete_whole_ones_and_a_reopen_sees_the_same_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard-0000.log");
        rt().block_on(async {
            let mut store = tens(&path, 5).await;
            assert_eq!(segments(&path).len(), 5);
            assert_eq!(indices(&mut store).await, (1..=50).collect::<Vec<_>>());

            store.purge(id(25)).await.unwrap();
            store.writer.drain().await.unwrap();
            // Segments 1-10 and 11-20 are gone; 21-30 stays, its entries read from 26 on.
            assert_eq!(segments(&path).len(), 3);
            let e = store.try_get_log_entries(26..=31).await.unwrap();
            assert_eq!(
                e.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
                (26..=31).collect::<Vec<_>>()
            );
            store.save_vote(&Vote::new(3, 2)).await.unwrap();
        });
        // As a crash before its deletion would leave it.
        let trash = path.join(format!("{:020}.trash", 1));
        std::fs::write(&trash, b"purged").unwrap();
        rt().block_on(async {
            let mut store = on_disk(LogStore::open_with(&path, 64).unwrap());
            assert!(!trash.exists());
            let state = store.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(id(25)));
            assert_eq!(state.last_log_id, Some(id(50)));
            assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
            append(&mut store, 51..=51).await;
            assert_eq!(indices(&mut store).await.last(), Some(&51));
        });
    }

    #[test]
    // The lock held across the awaits is the point: it holds the purge thread, not this one.
    #[allow(clippy::await_holding_lock)]
    fn appends_do_not_wait_for_a_purge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        rt().block_on(async {
            let mut store = tens(&path, 3).await;
            // Hold the purge thread at its first step (recording the purge in `meta`).
            let meta = store.meta.clone();
            let held = lock(&meta.file);
            store.purge(id(15)).await.unwrap();
            // The writer goes on: these appends are written and synced meanwhile.
            let wait = std::time::Duration::from_secs(20);
            tokio::time::timeout(wait, append(&mut store, 31..=40))
                .await
                .expect("the append waited for the purge");
            assert_eq!(meta.get().purged, None);
            assert_eq!(segments(&path).len(), 4);
            // Reads skip the purged entries at once all the same.
            assert_eq!(indices(&mut store).await, (16..=40).collect::<Vec<_>>());
            drop(held);
            store.writer.drain().await.unwrap();
            assert_eq!(store.meta.get().purged, Some(id(15)));
            // Segment 1-10 went to the spare; 11-20 keeps 16-20.
            assert_eq!(segments(&path).len(), 3);
            // A purge past the end of the log is recorded before the next append, which
            // leaves a gap after it.
            store.purge(id(60)).await.unwrap();
            append(&mut store, 61..=61).await;
            assert_eq!(store.meta.get().purged, Some(id(60)));
            store.writer.drain().await.unwrap();
            assert_eq!(indices(&mut store).await, [61]);
        });
        rt().block_on(async {
            let mut store = on_disk(LogStore::open_with(&path, 64).unwrap());
            assert_eq!(indices(&mut store).await, [61]);
        });
    }

    #[test]
    fn a_purged_segment_is_recycled_and_its_old_records_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let size = |name: String| std::fs::metadata(path.join(name)).unwrap().len();
        rt().block_on(async {
            let mut store = tens(&path, 3).await;
            let old_len = size(format!("{:020}.seg", 1));
            store.purge(id(10)).await.unwrap();
            store.writer.drain().await.unwrap();
            assert!(path.join(format!("{:020}.spare", 1)).exists());

            // Single entries: the next segment is the spare renamed, and it rolls after a
            // few records, leaving most of the old records behind them.
            for i in 31..=36 {
                append(&mut store, i..=i).await;
            }
            assert!(!path.join(format!("{:020}.spare", 1)).exists());
            assert_eq!(size(format!("{:020}.seg", 31)), old_len);
            let segs = segments(&path);
            assert_eq!(segs.len(), 4, "{segs:?}");
            assert_eq!(indices(&mut store).await, (11..=36).collect::<Vec<_>>());
        });
        rt().block_on(async {
            // The old records in the middle segment are skipped, the log is whole.
            let mut store = on_disk(LogStore::open_with(&path, 64).unwrap());
            assert_eq!(indices(&mut store).await, (11..=36).collect::<Vec<_>>());
            append(&mut store, 37..=37).await;
        });
    }

    fn spares(dir: &Path) -> Vec<String> {
        names_ending(dir, SPARE_SUFFIX)
    }

    #[test]
    fn purged_segments_are_kept_as_spares_up_to_the_bound_and_reused_in_turn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let runs = MAX_SPARES as u64 + 3;
        let next = rt().block_on(async {
            let mut store = tens(&path, runs).await;
            // Every segment but the last is full and purged: the bound's worth are kept.
            store.purge(id((runs - 1) * 10)).await.unwrap();
            store.writer.drain().await.unwrap();
            assert_eq!(spares(&path).len(), MAX_SPARES, "{:?}", spares(&path));
            assert_eq!(segments(&path).len(), 1);
            let old = spares(&path)
                .iter()
                .map(|n| std::fs::metadata(path.join(n)).unwrap().len())
                .collect::<Vec<_>>();

            // Single entries roll a segment every few records: each new one is a spare
            // renamed, full length, until none is left.
            let mut next = runs * 10 + 1;
            while !spares(&path).is_empty() {
                append(&mut store, next..=next).await;
                next += 1;
                assert!(next < runs * 10 + 100, "the spares were not used");
            }
            let segs = segments(&path);
            assert_eq!(segs.len(), 1 + MAX_SPARES, "{segs:?}");
            for (name, len) in segs[1..].iter().zip(old.iter().rev()) {
                assert_eq!(std::fs::metadata(path.join(name)).unwrap().len(), *len);
            }
            assert_eq!(
                indices(&mut store).await,
                ((runs - 1) * 10 + 1..next).collect::<Vec<_>>()
            );
            store.purge(id(next - 1)).await.unwrap();
            store.writer.drain().await.unwrap();
            next
        });
        // More spares than the bound on disk (left by an older build, say): the open keeps
        // the bound's worth and deletes the rest.
        let kept = spares(&path).len();
        assert!(kept > 0 && kept <= MAX_SPARES);
        for extra in 0..(MAX_SPARES + 2 - kept) as u64 {
            std::fs::write(
                path.join(format!("{:020}{SPARE_SUFFIX}", 900 + extra)),
                [0u8; 8],
            )
            .unwrap();
        }
        assert_eq!(spares(&path).len(), MAX_SPARES + 2);
        rt().block_on(async {
            let mut store = on_disk(LogStore::open_with(&path, 64).unwrap());
            assert_eq!(spares(&path).len(), MAX_SPARES);
            append(&mut store, next..=next).await;
            assert_eq!(indices(&mut store).await, [next]);
        });
    }

    fn in_memory(store: &LogStore) -> Vec<u64> {
        let recent = lock(&store.writer.recent);
        assert_eq!(
            recent.written_bytes,
            recent.written.iter().map(|(_, size)| size).sum::<usize>()
        );
        recent.entries.keys().copied().collect()
    }

    #[test]
    fn written_entries_stay_in_memory_until_applied_purged_or_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        rt().block_on(async {
            let mut store = LogStore::open_with(&path, 64).unwrap();
            append(&mut store, 1..=10).await;
            assert_eq!(in_memory(&store), (1..=10).collect::<Vec<_>>());
            // Applied up to 6: 1-6 go; they are read from the files.
            store.applied().set(6);
            assert_eq!(in_memory(&store), (7..=10).collect::<Vec<_>>());
            append(&mut store, 11..=12).await;
            assert_eq!(in_memory(&store), (7..=12).collect::<Vec<_>>());
            assert_eq!(indices(&mut store).await, (1..=12).collect::<Vec<_>>());
            let e = store.try_get_log_entries(5..9).await.unwrap();
            assert_eq!(
                e.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
                [5, 6, 7, 8]
            );

            store.purge(id(8)).await.unwrap();
            store.writer.drain().await.unwrap();
            assert_eq!(in_memory(&store), [9, 10, 11, 12]);
            assert_eq!(indices(&mut store).await, [9, 10, 11, 12]);
            assert!(store.try_get_log_entries(3..6).await.unwrap().is_empty());

            store.truncate_after(Some(id(10))).await.unwrap();
            assert_eq!(in_memory(&store), [9, 10]);
            append(&mut store, 11..=11).await;
            assert_eq!(indices(&mut store).await, [9, 10, 11]);
        });
        rt().block_on(async {
            // What memory held is on disk.
            let mut store = LogStore::open_with(&path, 64).unwrap();
            assert!(in_memory(&store).is_empty());
            assert_eq!(indices(&mut store).await, [9, 10, 11]);
        });
    }

    #[test]
    fn the_oldest_written_entries_leave_memory_beyond_the_cap() {
        let mut recent = Recent::default();
        for i in 1..=3 {
            recent.entries.insert(i, Arc::new(blank(i)));
        }
        // Nothing applied, but three halves of the cap do not fit: the first goes.
        recent.written(1, &[RECENT_BYTES / 2; 3], 0);
        assert_eq!(recent.entries.keys().copied().collect::<Vec<_>>(), [2, 3]);
        assert_eq!(recent.written_bytes, RECENT_BYTES);
    }

    #[test]
    fn a_read_racing_a_recycle_fails_rather_than_return_another_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let store = LogStore::open(&path).unwrap();
        rt().block_on(async {
            let mut store = store.clone();
            append(&mut store, 1..=10).await;
        });
        let runs = LogStore::locate(&lock(&store.disk), 1, 11).unwrap();
        assert_eq!(runs.len(), 1);
        let mut out = Vec::new();
        runs[0].read(&mut out).unwrap();
        assert_eq!(out.len(), 10);

        // The file is overwritten between locating and reading, as a recycled segment is.
        let mut buf = Vec::new();
        let newer: Vec<Entry> = (101..=110).map(blank).collect();
        encode(&newer.iter().collect::<Vec<_>>(), &mut buf).unwrap();
        runs[0].file.write_all_at(&buf, 0).unwrap();
        let err = runs[0].read(&mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains("entry 1 changed while being read"), "{err}");
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_damage_before_it_stops_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        rt().block_on(async {
            let mut store = on_disk(LogStore::open_with(&path, 64).unwrap());
            append(&mut store, 1..=10).await;
            append(&mut store, 11..=20).await;
        });
        // A crash in the middle of a write: the last record is cut short and some bytes of
        // garbage follow. (A direct write pads the file past its last record.)
        let name = segments(&path)[1].clone();
        let last = path.join(&name);
        let first: u64 = name.strip_suffix(SEGMENT_SUFFIX).unwrap().parse().unwrap();
        let (_, len, _) = scan(&last, first).unwrap();
        let f = OpenOptions::new().write(true).open(&last).unwrap();
        f.set_len(len - 3).unwrap();
        f.write_all_at(&[0xA5; 40], len - 3).unwrap();
        drop(f);
        rt().block_on(async {
            let mut store = on_disk(LogStore::open_with(&path, 64).unwrap());
            assert_eq!(indices(&mut store).await, (1..=19).collect::<Vec<_>>());
            let state = store.get_log_state().await.unwrap();
            assert_eq!(state.last_log_id, Some(id(19)));
            // The log goes on where it was cut.
            append(&mut store, 20..=21).await;
            assert_eq!(indices(&mut store).await.last(), Some(&21));
        });

        // A flipped byte in a segment that is not the last one is damage.
        let first = path.join(segments(&path)[0].clone());
        let f = OpenOptions::new().write(true).open(&first).unwrap();
        f.write_all_at(&[0xFF], 20).unwrap();
        drop(f);
        let err = LogStore::open_with(&path, 64).err().unwrap().to_string();
        assert!(err.contains("damaged"), "{err}");
        assert!(err.contains(&segments(&path)[0]), "{err}");

        // So is a damaged vote.
        let dir2 = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let mut store = LogStore::open(dir2.path()).unwrap();
            store.save_vote(&Vote::new(1, 1)).await.unwrap();
        });
        let f = OpenOptions::new()
            .write(true)
            .open(dir2.path().join(META))
            .unwrap();
        f.write_all_at(&[0, 0], 0).unwrap();
        drop(f);
        let err = LogStore::open(dir2.path()).err().unwrap().to_string();
        assert!(err.contains("meta"), "{err}");
    }

    #[test]
    fn direct_writes_rewrite_the_partial_block_and_keep_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let Some(mut d) = Direct::probe(dir.path()) else {
            eprintln!(
                "{}: no O_DIRECT here; nothing to test",
                dir.path().display()
            );
            return;
        };
        let path = dir.path().join("seg");
        let empty_file = || {
            Arc::new(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .unwrap(),
            )
        };
        let seg = empty_file();
        let fill = |data: &[u8]| {
            let data = data.to_vec();
            move |out: &mut Vec<u8>| {
                out.extend_from_slice(&data);
                Ok(())
            }
        };
        // Writes that start and end inside blocks, across blocks, and on their edges; the
        // larger ones grow the buffer while they fill it, so their blocks move to an
        // aligned place.
        let mut want = Vec::new();
        for (i, n) in [10usize, 4086, 1, 9000, 3, 4096, 700, 300_000, 5, 70_001]
            .into_iter()
            .enumerate()
        {
            let data = vec![i as u8 + 1; n];
            let (_, n) = d
                .write(&seg, &path, want.len() as u64, fill(&data))
                .unwrap();
            assert_eq!(n, data.len());
            want.extend_from_slice(&data);
            let mut got = vec![0; want.len()];
            seg.read_exact_at(&mut got, 0).unwrap();
            assert_eq!(got, want, "after write {i}");
            // Zeros pad the last block.
            let file_len = std::fs::metadata(&path).unwrap().len();
            assert_eq!(file_len, want.len().div_ceil(BLOCK) as u64 * BLOCK as u64);
            let mut pad = vec![1; file_len as usize - want.len()];
            seg.read_exact_at(&mut pad, want.len() as u64).unwrap();
            assert!(
                pad.iter().all(|&b| b == 0),
                "after write {i}: the padding is not zeros"
            );
        }
        // Cut back (a truncation) into an earlier block: the next write takes that block's
        // head from the file, not from what it remembers.
        seg.set_len(5000).unwrap();
        want.truncate(5000);
        d.write(&seg, &path, 5000, fill(b"after the cut")).unwrap();
        want.extend_from_slice(b"after the cut");
        let mut got = vec![0; want.len()];
        seg.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(got, want);
        // A new file under the same name gets a new direct handle.
        std::fs::remove_file(&path).unwrap();
        let seg2 = empty_file();
        d.write(&seg2, &path, 0, fill(b"new")).unwrap();
        let mut got = vec![0; 3];
        seg2.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(&got, b"new");
    }

    #[test]
    fn a_truncation_survives_a_reopen_and_appends_follow_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        rt().block_on(async {
            let mut store = tens(&path, 3).await;
            // Into the middle of the second segment: the third goes, the second is cut.
            store.truncate_after(Some(id(14))).await.unwrap();
            assert_eq!(segments(&path).len(), 2);
            assert_eq!(indices(&mut store).await, (1..=14).collect::<Vec<_>>());
            assert_eq!(
                store.get_log_state().await.unwrap().last_log_id,
                Some(id(14))
            );
            // At a segment's first entry: the whole segment goes.
            store.truncate_after(Some(id(10))).await.unwrap();
            assert_eq!(segments(&path).len(), 1);
            append(&mut store, 11..=12).await;
        });
        rt().block_on(async {
            let mut store = on_disk(LogStore::open_with(&path, 64).unwrap());
            assert_eq!(indices(&mut store).await, (1..=12).collect::<Vec<_>>());
        });
    }

    #[test]
    fn a_purge_past_the_end_lets_the_log_start_again_after_it() {
        // As when a follower installs a snapshot newer than its whole log.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        rt().block_on(async {
            let mut store = on_disk(LogStore::open_with(&path, 64).unwrap());
            append(&mut store, 1..=5).await;
            store.purge(id(100)).await.unwrap();
            append(&mut store, 101..=103).await;
            assert_eq!(indices(&mut store).await, vec![101, 102, 103]);
            // An append that leaves a hole above the purge is refused.
            assert!(try_append(&mut store, 200..=200).await.is_err());
        });
        rt().block_on(async {
            let mut store = on_disk(LogStore::open_with(&path, 64).unwrap());
            let state = store.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(id(100)));
            assert_eq!(state.last_log_id, Some(id(103)));
            assert_eq!(segments(&path), vec![format!("{:020}.seg", 101)]);
        });
    }

    #[test]
    fn a_redb_log_is_imported_once() {
        use redb::TableDefinition;
        const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
        const META_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("shard-0000.log.redb");
        {
            let db = redb::Database::create(&old).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(LOG).unwrap();
                // 1-3 purged but not yet deleted (as the old writer left them).
                for i in 1..=8 {
                    t.insert(i, postcard::to_allocvec(&blank(i)).unwrap().as_slice())
                        .unwrap();
                }
                let mut m = txn.open_table(META_TABLE).unwrap();
                m.insert(
                    "vote",
                    postcard::to_allocvec(&Vote::new(4, 1)).unwrap().as_slice(),
                )
                .unwrap();
                m.insert(
                    "last_purged",
                    postcard::to_allocvec(&id(3)).unwrap().as_slice(),
                )
                .unwrap();
            }
            txn.commit().unwrap();
        }
        let new = dir.path().join("shard-0000.log");
        // A copy of the old file, as if a run had stopped between the rename and the delete.
        let copy = dir.path().join("copy.redb");
        std::fs::copy(&old, &copy).unwrap();
        import_redb(&old, &new).unwrap();
        assert!(!old.exists());
        std::fs::rename(&copy, &old).unwrap();
        import_redb(&old, &new).unwrap();
        assert!(!old.exists());
        rt().block_on(async {
            let mut store = LogStore::open(&new).unwrap();
            assert_eq!(indices(&mut store).await, (4..=8).collect::<Vec<_>>());
            let state = store.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(id(3)));
            assert_eq!(state.last_log_id, Some(id(8)));
            assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(4, 1)));
        });
    }
}
