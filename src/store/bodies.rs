//! Message bodies of one shard, kept in append-only files beside its redb database.
//!
//! redb stored every body in its B-tree: a 1 KiB body took a third of a 4 KiB leaf, was
//! written into the page cache once by the insert and again by each durable commit that
//! found its page dirty, and left the leaf to be rewritten when it went. Measured with
//! batched sends, that was two thirds of the state machine's work (docs/BENCHMARKS.md).
//! Here a body is appended once to the shard's active body file, and the
//! [`STATE`](super::schema::STATE) row of its message says where it is.
//!
//! **Files.** `<shard>.bodies/NNNNNNNNNNNNNNNN.body`, numbered from 1. The active file
//! takes appends until it passes [`FILE_BYTES`]; then it is synced and sealed, and the
//! next number becomes active. [`BODY_FILES`](super::schema::BODY_FILES) counts the live
//! bodies and bytes of each file; a file whose count reaches zero is deleted.
//!
//! **Durability.** Bodies are appended to a buffer, and reads of the latest bodies are
//! served from it, as views of its memory rather than copies. The buffer is written to
//! the file before every durable commit (and whenever it holds [`MAX_BUFFERED`] bytes),
//! then the file is synced, so whatever a durable commit refers to is on disk. A body
//! whose message went before its buffer was written is left out: most messages of a
//! busy queue are received and acknowledged within milliseconds, and their bodies then
//! never reach the disk (the file has a hole there). After a crash the active file is
//! cut back to the end [`BODY_META`](super::schema::BODY_META) recorded, and the entries
//! applied since are applied again from the Raft log. A file is deleted only after a
//! durable commit that no longer refers to it.
//!
//! **Compaction.** One old message can keep a whole file alive. When two sealed files are
//! each less than a quarter live, the state machine copies their live bodies to the active
//! file, a few thousand rows per transaction, until their counts reach zero.
//!
//! Readers of an older view than the state machine's (peek, snapshots being sent) read
//! under [`Bodies::locked`], or write the buffer out and pin the open file handles
//! ([`Bodies::pin_with`]), so a file deleted meanwhile stays readable by the snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::{Bytes, BytesMut};

/// A file is sealed, and the next one started, once it holds this many bytes.
pub const FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Sparse files needed before a compaction starts, so that its scan of every message's
/// reference is paid for by at least this many files' worth of disk given back.
pub const COMPACT_AFTER: usize = 2;

/// Messages (state rows) a compaction visits per transaction.
pub const COMPACT_ROWS: usize = 4096;

/// The buffer is written to the file once it holds this many bytes, durable commit or
/// not: the bound on its memory, one per Raft group.
pub const MAX_BUFFERED: usize = 8 * 1024 * 1024;

/// The block a buffer that readers share starts anew with (see `Writer::make_room`).
const BLOCK: usize = 256 * 1024;

/// Where one body is: file number, offset, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BodyRef {
    /// File number.
    pub file: u64,
    /// Offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

impl BodyRef {
    /// The row value in [`BODY_REF`](super::schema::BODY_REF) (formats 3 and 4).
    pub fn to_tuple(self) -> (u64, u64, u32) {
        (self.file, self.offset, self.len)
    }
    /// From a row value of [`BODY_REF`](super::schema::BODY_REF) (formats 3 and 4).
    pub fn from_tuple((file, offset, len): (u64, u64, u32)) -> Self {
        Self { file, offset, len }
    }
}

/// The body files of one shard.
pub struct Bodies {
    dir: PathBuf,
    /// [`FILE_BYTES`] but in tests.
    file_bytes: u64,
    /// Every file not yet deleted, for readers.
    files: RwLock<BTreeMap<u64, Arc<File>>>,
    /// The state machine's side: one writer at a time.
    w: Mutex<Writer>,
    /// The shard's database may hold bodies as rows of the format-3 table
    /// [`BODY`](super::schema::BODY) (see [`Bodies::may_hold_legacy`]).
    legacy: AtomicBool,
}

struct Writer {
    /// The active file's number and handle.
    id: u64,
    file: Arc<File>,
    /// Where the buffer starts in the active file: what came before is written to it.
    written: u64,
    /// The buffer: the bodies appended after `written`, in `shared` then in `buf`.
    /// Reading a body of `buf` moves all of `buf` to `shared` first, without a copy, so
    /// the body read is a view of the buffer's memory (the answer carrying it keeps that
    /// memory alive), not a copy. A body is never split between two parts.
    buf: BytesMut,
    /// Earlier parts of the buffer, each with its offset in the buffer, in order.
    shared: Vec<(usize, Bytes)>,
    /// The bodies in the buffer, in order, and whether each is still referred to.
    pending: Vec<Pending>,
    /// Written since the last sync.
    unsynced: bool,
    /// Keep the bodies in the buffer until the next durable commit (see
    /// [`Bodies::after_commit`]).
    defer: bool,
    /// The position at the last sync, and the bytes appended and released since; bodies
    /// at or after that position count as released young.
    since: (u64, u64),
    appended: u64,
    released_young: u64,
    /// Files no longer referred to by the committed state, deleted after the next
    /// durable commit.
    retired: Vec<u64>,
    /// A compaction in progress: the files it empties and the next message to visit.
    compaction: Option<Compaction>,
}

/// A body in the buffer.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Offset in the buffer.
    start: usize,
    len: u32,
    /// Not released: written when the buffer is.
    live: bool,
}

/// The bodies as the state machine sees them, with no write of the buffer or release of a
/// body possible meanwhile (see [`Bodies::locked`]).
pub struct BodyReader<'a> {
    dir: &'a Path,
    /// Mutable for a read of the buffer (see `Writer::buffered`).
    w: std::cell::RefCell<std::sync::MutexGuard<'a, Writer>>,
    files: &'a RwLock<BTreeMap<u64, Arc<File>>>,
}

impl BodyReader<'_> {
    /// Reads a body; `None` if its file is gone.
    pub fn read(&self, r: BodyRef) -> io::Result<Option<Bytes>> {
        if let Some(b) = self.w.borrow_mut().buffered(r) {
            return Ok(Some(b));
        }
        let f = self
            .files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&r.file)
            .cloned();
        match f {
            Some(f) => read_at(self.dir, &f, r).map(Some),
            None => Ok(None),
        }
    }
}

impl Writer {
    /// The bytes in `shared`: where `buf` starts in the buffer.
    fn shared_len(&self) -> usize {
        self.shared.last().map_or(0, |(at, part)| at + part.len())
    }

    /// The bytes in the buffer.
    fn buffered_len(&self) -> usize {
        self.shared_len() + self.buf.len()
    }

    /// Moves `buf` to `shared`: its memory can then be shared with readers.
    fn share(&mut self) {
        if !self.buf.is_empty() {
            let at = self.shared_len();
            self.shared.push((at, self.buf.split().freeze()));
        }
    }

    /// Makes room in `buf` for `size` more bytes. Until a part is split off `buf` (parts
    /// are cut from it only, and all go at a flush, when a split `buf` is replaced), it
    /// grows in place, as a `Vec` does, and keeps its capacity across flushes (a
    /// follower's, whose bodies nobody reads, settles at one allocation for the whole
    /// buffer). Once split, its block is shared with the parts and the answers that read
    /// from them, and growing it would copy its bytes into a new block, or, once nothing
    /// else refers to the old one, every byte ever split off it too: so what it holds
    /// becomes a part, and a fresh block of at least [`BLOCK`] takes its place, with no
    /// byte copied.
    fn make_room(&mut self, size: usize) {
        if self.buf.capacity() - self.buf.len() >= size {
            return;
        }
        if self.shared.is_empty() {
            self.buf.reserve(size.max(BLOCK));
            return;
        }
        self.share();
        self.buf = BytesMut::with_capacity(size.max(BLOCK));
    }

    /// The body `r` if it is in the buffer: a view of the buffer's memory.
    fn buffered(&mut self, r: BodyRef) -> Option<Bytes> {
        if r.file != self.id || r.offset < self.written {
            return None;
        }
        let start = usize::try_from(r.offset - self.written).ok()?;
        let end = start.checked_add(r.len as usize)?;
        if end > self.buffered_len() {
            return None;
        }
        if end > self.shared_len() {
            self.share();
        }
        // The part the body starts in (parts are in order of offset); it holds the
        // whole body.
        let i = self
            .shared
            .partition_point(|(at, _)| *at <= start)
            .checked_sub(1)?;
        let (at, part) = &self.shared[i];
        (end - at <= part.len()).then(|| part.slice(start - at..end - at))
    }

    /// The buffer's bytes from `a` to `b`, with their offsets in the buffer, a slice for
    /// each part (`shared`'s, then `buf`) they are in.
    fn pieces(&self, a: usize, b: usize) -> impl Iterator<Item = (usize, &[u8])> {
        let first = self
            .shared
            .partition_point(|(at, _)| *at <= a)
            .saturating_sub(1);
        let parts = self.shared[first..]
            .iter()
            .map(|(at, part)| (*at, &part[..]));
        parts
            .chain(std::iter::once((self.shared_len(), &self.buf[..])))
            .take_while(move |(at, _)| *at < b)
            .filter_map(move |(at, part)| {
                let (from, to) = (a.max(at) - at, b.min(at + part.len()) - at);
                (from < to).then(|| (at + from, &part[from..to]))
            })
    }

    /// Writes the live bodies of the buffer to the file and empties it.
    fn flush(&mut self) -> io::Result<()> {
        let len = self.buffered_len();
        if len == 0 {
            return Ok(());
        }
        // Runs of adjacent live bodies, one write for each part of the buffer a run is in.
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for p in self.pending.iter().filter(|p| p.live) {
            let end = p.start + p.len as usize;
            match runs.last_mut() {
                Some(run) if run.1 == p.start => run.1 = end,
                _ => runs.push((p.start, end)),
            }
        }
        for &(a, b) in &runs {
            for (at, piece) in self.pieces(a, b) {
                self.file.write_all_at(piece, self.written + at as u64)?;
            }
        }
        let end = self.written + len as u64;
        if runs.last().is_none_or(|r| r.1 < len) {
            // The last bodies went before they were written: the file still ends where
            // the recorded position says.
            self.file.set_len(end)?;
        }
        self.written = end;
        self.unsynced = true;
        let split = !self.shared.is_empty();
        self.buf.clear();
        self.shared.clear();
        self.pending.clear();
        if split || self.buf.capacity() > MAX_BUFFERED * 2 {
            // A split block is left to the answers still reading from it.
            self.buf = BytesMut::new();
        }
        Ok(())
    }
}

/// A compaction's progress (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    /// Files whose live bodies are being copied to the active file.
    pub targets: BTreeSet<u64>,
    /// The next `(queue id, seq)` to visit.
    pub next: (u64, u64),
}

/// The open handles of every file at one moment: what a snapshot reads its bodies from.
pub struct BodyPin {
    dir: PathBuf,
    files: BTreeMap<u64, Arc<File>>,
}

impl BodyPin {
    /// Reads a body; `None` if its file is gone.
    pub fn read(&self, r: BodyRef) -> io::Result<Option<Bytes>> {
        match self.files.get(&r.file) {
            Some(f) => read_at(&self.dir, f, r).map(Some),
            None => Ok(None),
        }
    }
}

/// Reads body `r` from `f`, file `r.file` of `dir`; an error names the file.
fn read_at(dir: &Path, f: &File, r: BodyRef) -> io::Result<Bytes> {
    let mut v = vec![0u8; r.len as usize];
    f.read_exact_at(&mut v, r.offset)
        .map_err(|e| named(&dir.join(file_name(r.file)), e))?;
    Ok(Bytes::from(v))
}

fn file_name(id: u64) -> String {
    format!("{id:016}.body")
}

/// The number of a body file named `name`, if it is one.
pub(crate) fn file_id(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".body")?;
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Where the body files stand as a shard's database records them, for [`Bodies::open`]:
/// the active file and its end, from [`BODY_META`](super::schema::BODY_META) (0 when not
/// recorded yet), and the files [`BODY_FILES`](super::schema::BODY_FILES) counts live
/// bodies in.
pub fn recorded(
    meta: &impl redb::ReadableTable<&'static str, u64>,
    files: &impl redb::ReadableTable<u64, (u64, u64)>,
) -> Result<(u64, u64, BTreeSet<u64>), redb::StorageError> {
    let get =
        |k: &str| -> Result<u64, redb::StorageError> { Ok(meta.get(k)?.map_or(0, |v| v.value())) };
    let mut live = BTreeSet::new();
    for e in files.iter()? {
        live.insert(e?.0.value());
    }
    Ok((get("active")?, get("end")?, live))
}

impl Bodies {
    /// The directory of the shard whose database is `db_path`.
    pub fn dir_for(db_path: &Path) -> PathBuf {
        db_path.with_extension("bodies")
    }

    /// Opens the body files in `dir` as the durable state left them: `active` is the
    /// active file (0 for none yet) and `end` its recorded length, `live` the files that
    /// hold live bodies. Every other file is deleted (left by a crash between a commit
    /// and a deletion, or by a write never committed), `.trash` files too, and the active
    /// file is cut to `end`.
    pub fn open(dir: &Path, active: u64, end: u64, live: &BTreeSet<u64>) -> io::Result<Bodies> {
        std::fs::create_dir_all(dir).map_err(|e| named(dir, e))?;
        super::reclaim::clear(dir).map_err(|e| named(dir, e))?;
        let mut files = BTreeMap::new();
        let mut dir_changed = false;
        for e in std::fs::read_dir(dir).map_err(|e| named(dir, e))? {
            let e = e?;
            let path = e.path();
            let Some(id) = e.file_name().to_str().and_then(file_id) else {
                continue;
            };
            if id == active || live.contains(&id) {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| named(&path, e))?;
                files.insert(id, Arc::new(f));
            } else {
                std::fs::remove_file(&path).map_err(|e| named(&path, e))?;
                tracing::info!(file = %path.display(), "removed a body file nothing refers to");
                dir_changed = true;
            }
        }
        for id in live {
            if !files.contains_key(id) {
                tracing::error!(dir = %dir.display(), file = id,
                    "a body file the state refers to is missing; its messages cannot be delivered");
            }
        }
        let id = active.max(1);
        let file = match files.get(&id) {
            Some(f) => f.clone(),
            None => {
                let path = dir.join(file_name(id));
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .map_err(|e| named(&path, e))?;
                let f = Arc::new(f);
                files.insert(id, f.clone());
                dir_changed = true;
                f
            }
        };
        let len = file.metadata()?.len();
        let written = if id == active { end } else { 0 };
        if len > written {
            file.set_len(written)?;
            file.sync_all()?;
        } else if len < written {
            tracing::error!(dir = %dir.display(), file = id, len, recorded = written,
                "the active body file is shorter than the state recorded; the messages past its end cannot be delivered");
        }
        if dir_changed {
            sync_dir(dir).map_err(|e| named(dir, e))?;
        }
        Ok(Bodies {
            dir: dir.to_path_buf(),
            file_bytes: FILE_BYTES,
            files: RwLock::new(files),
            w: Mutex::new(Writer {
                id,
                file,
                written,
                buf: BytesMut::new(),
                shared: Vec::new(),
                pending: Vec::new(),
                unsynced: false,
                defer: false,
                since: (id, written),
                appended: 0,
                released_young: 0,
                retired: Vec::new(),
                compaction: None,
            }),
            legacy: AtomicBool::new(true),
        })
    }

    /// Whether the shard's database may hold bodies as [`BODY`](super::schema::BODY) rows
    /// (a database upgraded from format 3): true until a transaction finds that table
    /// empty. Nothing writes it any more (a snapshot's bodies go to the body files too), so
    /// once empty it stays empty, and later transactions need not open it.
    pub fn may_hold_legacy(&self) -> bool {
        self.legacy.load(Ordering::Acquire)
    }

    /// Records that the [`BODY`](super::schema::BODY) table is empty (see
    /// [`Bodies::may_hold_legacy`]).
    pub fn no_legacy(&self) {
        self.legacy.store(false, Ordering::Release);
    }

    /// Seals files at `n` bytes instead of [`FILE_BYTES`] (tests use small files).
    pub fn with_file_bytes(mut self, n: u64) -> Self {
        self.file_bytes = n.max(1);
        self
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A sealed file with fewer live bytes than this is sparse: a compaction candidate.
    pub fn sparse_bytes(&self) -> u64 {
        self.file_bytes / 4
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.w.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The active file and the length it will have once the current transaction's bodies
    /// are written: what [`BODY_META`](super::schema::BODY_META) records.
    pub fn position(&self) -> (u64, u64) {
        let w = self.writer();
        (w.id, w.written + w.buffered_len() as u64)
    }

    /// Appends one body of `size` bytes, written by `write` at the end of the buffer it
    /// is given, which has room for them. (A body longer than `size` still goes whole, at
    /// the cost of a copy of the buffer.)
    pub fn append(&self, size: usize, write: impl FnOnce(&mut BytesMut)) -> BodyRef {
        let mut w = self.writer();
        w.make_room(size);
        let (start, before) = (w.buffered_len(), w.buf.len());
        write(&mut w.buf);
        let len = (w.buf.len() - before) as u32;
        w.appended += u64::from(len);
        w.pending.push(Pending {
            start,
            len,
            live: true,
        });
        BodyRef {
            file: w.id,
            offset: w.written + start as u64,
            len,
        }
    }

    /// Reads a body of the latest state (the state machine's own reads). Readers of an
    /// older view go through [`Bodies::locked`] or a [`BodyPin`].
    pub fn read(&self, r: BodyRef) -> io::Result<Option<Bytes>> {
        self.locked(|rd| rd.read(r))
    }

    /// Runs `f` with a reader of the bodies during which no body is released or written
    /// out: a read transaction begun inside `f` finds every body it refers to (in the
    /// buffer, or written to a file before it was released). Appends wait meanwhile.
    pub fn locked<T>(&self, f: impl FnOnce(&BodyReader<'_>) -> T) -> T {
        let rd = BodyReader {
            dir: &self.dir,
            w: std::cell::RefCell::new(self.writer()),
            files: &self.files,
        };
        f(&rd)
    }

    /// Bodies whose messages a committed transaction removed: those still in the buffer
    /// will not be written.
    pub fn release(&self, refs: &[BodyRef]) {
        if refs.is_empty() {
            return;
        }
        let mut w = self.writer();
        let (id, written) = (w.id, w.written);
        for r in refs {
            if (r.file, r.offset) >= w.since {
                w.released_young += u64::from(r.len);
            }
            if r.file != id || r.offset < written {
                continue;
            }
            let start = (r.offset - written) as usize;
            if let Ok(i) = w.pending.binary_search_by_key(&start, |p| p.start) {
                w.pending[i].live = false;
            }
        }
    }

    /// The files as they are now, kept readable for as long as the pin lives. The buffer
    /// is not in it: see [`Bodies::pin_with`].
    #[cfg(test)]
    pub fn pin(&self) -> BodyPin {
        BodyPin {
            dir: self.dir.clone(),
            files: self.files.read().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    /// Writes the buffer out, runs `view` (which opens a read transaction) and pins the
    /// files, with no body released or file deleted in between: every body the view
    /// refers to is in a pinned file, even when commits run beside it.
    pub fn pin_with<T>(&self, view: impl FnOnce() -> T) -> io::Result<(T, BodyPin)> {
        let mut w = self.writer();
        w.flush()?;
        let files = self.files.read().unwrap_or_else(|e| e.into_inner());
        let v = view();
        Ok((
            v,
            BodyPin {
                dir: self.dir.clone(),
                files: files.clone(),
            },
        ))
    }

    /// Writes the buffer's live bodies to the active file.
    #[cfg(test)]
    pub fn flush(&self) -> io::Result<()> {
        self.writer().flush()
    }

    /// After every commit that is not durable: writes the buffer out, unless its bodies
    /// are kept for the next durable commit. They are kept while more than half the bytes
    /// appended between two syncs were released before the second (consumers keep up, so
    /// most bodies need never be written), and until the buffer holds [`MAX_BUFFERED`]
    /// bytes. Otherwise each commit's bodies are written at once: a large write of bodies
    /// appended long ago cost ten times the CPU of the same bytes written while they were
    /// still in the processor's cache (docs/BENCHMARKS.md).
    pub fn after_commit(&self) -> io::Result<()> {
        let mut w = self.writer();
        if !w.defer || w.buffered_len() >= MAX_BUFFERED {
            w.flush()?;
        }
        Ok(())
    }

    /// Whether bodies are being kept for the next durable commit.
    #[cfg(test)]
    pub fn deferring(&self) -> bool {
        self.writer().defer
    }

    /// Writes the buffer out and syncs the active file: before every durable commit.
    pub fn sync(&self) -> io::Result<()> {
        let mut w = self.writer();
        w.flush()?;
        if w.unsynced {
            w.file.sync_data()?;
            w.unsynced = false;
        }
        if w.appended > 0 {
            w.defer = w.released_young.saturating_mul(2) > w.appended;
        }
        w.since = (w.id, w.written);
        w.appended = 0;
        w.released_young = 0;
        Ok(())
    }

    /// Whether the active file is full.
    pub fn full(&self) -> bool {
        let w = self.writer();
        w.written + w.buffered_len() as u64 >= self.file_bytes
    }

    /// Whether a commit that appends fewer than `margin` bytes of bodies only writes to the
    /// page cache here: no compaction step is due (it copies thousands of bodies) and the
    /// active file will not fill up (a roll syncs it and creates the next).
    pub fn quiet_for(&self, margin: u64) -> bool {
        let w = self.writer();
        w.compaction.is_none() && w.written + w.buffered_len() as u64 + margin < self.file_bytes
    }

    /// Seals the active file (written and synced) and starts the next; returns the
    /// sealed file's number.
    pub fn roll(&self) -> io::Result<u64> {
        self.sync()?;
        let mut w = self.writer();
        let old = w.id;
        let id = old + 1;
        let path = self.dir.join(file_name(id));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| named(&path, e))?;
        sync_dir(&self.dir).map_err(|e| named(&self.dir, e))?;
        let f = Arc::new(f);
        self.files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, f.clone());
        w.id = id;
        w.file = f;
        w.written = 0;
        Ok(old)
    }

    /// Files the state just committed no longer refers to: deleted after the next durable
    /// commit ([`Bodies::durable`]).
    pub fn retire(&self, ids: impl IntoIterator<Item = u64>) {
        let mut w = self.writer();
        let active = w.id;
        w.retired.extend(ids.into_iter().filter(|&id| id != active));
    }

    /// Every file but the active one: what a snapshot install replaces.
    pub fn all_but_active(&self) -> Vec<u64> {
        let active = self.writer().id;
        self.files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .filter(|&id| id != active)
            .collect()
    }

    /// A durable commit is done: deletes the retired files (renamed at once, their blocks
    /// freed gradually by [`super::reclaim`]). A failure is logged; the file is deleted at
    /// the next start.
    pub fn durable(&self) {
        let retired = std::mem::take(&mut self.writer().retired);
        if retired.is_empty() {
            return;
        }
        let gone: Vec<(u64, Option<Arc<File>>)> = {
            let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
            retired
                .into_iter()
                .map(|id| (id, files.remove(&id)))
                .collect()
        };
        // Set aside at once, deleted a step at a time by another thread once no snapshot
        // still reads them (see `reclaim`): a 64 MiB unlink held this thread and the log's
        // syncs for milliseconds.
        for (id, file) in gone {
            let path = self.dir.join(file_name(id));
            let done = match file {
                Some(f) => super::reclaim::delete(&path, f),
                None => std::fs::remove_file(&path),
            };
            match done {
                Ok(()) => tracing::debug!(file = %path.display(), "body file deleted"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "body file not deleted; it is removed at the next start")
                }
            }
        }
    }

    /// The compaction in progress, if any.
    pub fn compaction(&self) -> Option<Compaction> {
        self.writer().compaction.clone()
    }

    /// Records the compaction's progress once the transaction that made it committed.
    pub fn set_compaction(&self, c: Option<Compaction>) {
        self.writer().compaction = c;
    }

    /// The active file's number.
    pub fn active(&self) -> u64 {
        self.writer().id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends a body of `n` bytes `v`.
    fn put(b: &Bodies, n: usize, v: u8) -> BodyRef {
        b.append(n, move |buf: &mut BytesMut| {
            buf.extend(std::iter::repeat_n(v, n))
        })
    }

    /// Empty body files in a new directory, kept as long as the handle.
    fn fresh() -> (tempfile::TempDir, Bodies) {
        let dir = tempfile::tempdir().unwrap();
        let b = Bodies::open(dir.path(), 0, 0, &BTreeSet::new()).unwrap();
        (dir, b)
    }

    #[test]
    fn a_commit_is_quiet_unless_it_may_fill_the_file_or_a_compaction_runs() {
        let dir = tempfile::tempdir().unwrap();
        let b = Bodies::open(dir.path(), 0, 0, &BTreeSet::new())
            .unwrap()
            .with_file_bytes(100);
        assert!(b.quiet_for(99));
        assert!(!b.quiet_for(100));
        put(&b, 60, 1);
        // Buffered bodies count as much as written ones.
        assert!(b.quiet_for(39));
        assert!(!b.quiet_for(40));
        b.sync().unwrap();
        assert!(!b.quiet_for(40));
        b.set_compaction(Some(Compaction {
            targets: BTreeSet::from([7]),
            next: (0, 0),
        }));
        assert!(!b.quiet_for(0));
    }

    #[test]
    fn bodies_are_read_back_before_and_after_flush_and_across_a_roll() {
        let (_dir, b) = fresh();
        let r1 = put(&b, 10, 1);
        let r2 = put(&b, 5, 2);
        assert_eq!(
            r2,
            BodyRef {
                file: 1,
                offset: 10,
                len: 5
            }
        );
        assert_eq!(b.read(r2).unwrap().unwrap(), vec![2u8; 5]);
        assert_eq!(b.position(), (1, 15));
        b.flush().unwrap();
        assert_eq!(b.read(r1).unwrap().unwrap(), vec![1u8; 10]);
        assert_eq!(b.roll().unwrap(), 1);
        let r3 = put(&b, 3, 3);
        assert_eq!(r3.file, 2);
        assert_eq!(b.read(r3).unwrap().unwrap(), vec![3u8; 3]);
        assert_eq!(b.read(r2).unwrap().unwrap(), vec![2u8; 5]);
    }

    #[test]
    fn open_cuts_the_active_file_and_removes_files_nothing_refers_to() {
        let dir = tempfile::tempdir().unwrap();
        {
            let b = Bodies::open(dir.path(), 0, 0, &BTreeSet::new()).unwrap();
            put(&b, 100, 1);
            b.roll().unwrap();
            put(&b, 100, 2);
            b.roll().unwrap();
            put(&b, 50, 3);
            put(&b, 50, 4); // never committed: cut at open
            b.sync().unwrap();
        }
        std::fs::write(dir.path().join("unrelated.txt"), b"x").unwrap();
        // File 1 is dead, file 2 live, file 3 active with 50 committed bytes.
        let b = Bodies::open(dir.path(), 3, 50, &BTreeSet::from([2])).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [file_name(2), file_name(3), "unrelated.txt".into()]);
        assert_eq!(
            std::fs::metadata(dir.path().join(file_name(3)))
                .unwrap()
                .len(),
            50
        );
        let r = BodyRef {
            file: 2,
            offset: 0,
            len: 100,
        };
        assert_eq!(b.read(r).unwrap().unwrap(), vec![2u8; 100]);
        assert_eq!(put(&b, 1, 9).offset, 50);
    }

    #[test]
    fn retired_files_go_after_a_durable_commit_but_a_pin_still_reads_them() {
        let (dir, b) = fresh();
        let r = put(&b, 8, 7);
        b.roll().unwrap();
        let pin = b.pin();
        b.retire([1, 2]); // the active file is never retired
        assert!(b.read(r).unwrap().is_some());
        b.durable();
        assert!(b.read(r).unwrap().is_none());
        assert!(!dir.path().join(file_name(1)).exists());
        assert!(dir.path().join(file_name(2)).exists());
        assert_eq!(pin.read(r).unwrap().unwrap(), vec![7u8; 8]);
        // Set aside, and left whole while the pin reads it.
        let trash = crate::store::reclaim::trash_name(&dir.path().join(file_name(1)));
        assert!(trash.exists());
        drop((pin, b));
        // What a crash left set aside goes when the files are opened again.
        std::fs::write(&trash, b"left").unwrap();
        Bodies::open(dir.path(), 2, 0, &BTreeSet::new()).unwrap();
        assert!(!trash.exists());
    }

    #[test]
    fn released_bodies_are_left_out_of_the_file_and_the_rest_written() {
        let (dir, b) = fresh();
        let r: Vec<BodyRef> = (1..=5).map(|i| put(&b, 10, i)).collect();
        b.release(&[r[1], r[2], r[4]]);
        // Released bodies still read back until the buffer is written.
        assert_eq!(b.read(r[2]).unwrap().unwrap(), vec![3u8; 10]);
        b.sync().unwrap();
        let file = std::fs::read(dir.path().join(file_name(1))).unwrap();
        let mut want = vec![1u8; 10];
        want.extend([0u8; 20]);
        want.extend([4u8; 10]);
        want.extend([0u8; 10]); // the file keeps its length
        assert_eq!(file, want);
        assert_eq!(b.position(), (1, 50));
        // Three of five bodies were released before the sync: bodies are kept from now on.
        assert!(b.deferring());
        // Releasing what is written already changes nothing; appends go on after it.
        b.release(&[r[0], r[3]]);
        assert_eq!(b.read(r[3]).unwrap().unwrap(), vec![4u8; 10]);
        assert_eq!(put(&b, 1, 9).offset, 50);
        let len = || {
            std::fs::metadata(dir.path().join(file_name(1)))
                .unwrap()
                .len()
        };
        // Kept: the buffer is written out when full, not before.
        b.after_commit().unwrap();
        assert_eq!(len(), 50);
        put(&b, MAX_BUFFERED, 7);
        b.after_commit().unwrap();
        assert_eq!(len(), 51 + MAX_BUFFERED as u64);
        // Nothing appended since the last sync was released: each commit's bodies are
        // written at once.
        b.sync().unwrap();
        assert!(!b.deferring());
        put(&b, 5, 8);
        b.after_commit().unwrap();
        assert_eq!(len(), 56 + MAX_BUFFERED as u64);
    }

    #[test]
    fn the_buffer_grows_without_moving_a_byte_once_shared_and_in_place_until_then() {
        let (dir, b) = fresh();
        let start = |b: &Bodies| b.writer().buf.as_ptr() as usize;
        // Never read: one allocation, kept across a flush.
        put(&b, 100, 1);
        let before = start(&b);
        b.sync().unwrap();
        let r2 = put(&b, 100, 2);
        assert_eq!(start(&b), before, "the same block, reused");
        // Read: the block is shared. A body the rest of it cannot hold does not move the
        // bodies still in it to a new block: they become a part, as a read would make
        // them, and the new body starts a block of its own.
        assert_eq!(b.read(r2).unwrap().unwrap(), vec![2u8; 100]);
        let r3 = put(&b, 30, 3);
        let at = start(&b);
        let big = BLOCK * 2;
        let r4 = put(&b, big, 4);
        assert_eq!(
            b.read(r3).unwrap().unwrap().as_ptr() as usize,
            at,
            "not moved"
        );
        assert_eq!(b.read(r4).unwrap().unwrap(), vec![4u8; big]);
        let r5 = put(&b, 5, 5);
        b.release(&[r3]);
        b.sync().unwrap();
        let mut want = vec![1u8; 100];
        want.extend([2u8; 100]);
        want.extend([0u8; 30]);
        want.extend(vec![4u8; big]);
        want.extend([5u8; 5]);
        assert_eq!(std::fs::read(dir.path().join(file_name(1))).unwrap(), want);
        // After a flush, a buffer that was shared starts from a new block.
        assert_eq!(b.writer().buf.capacity(), 0);
        let r6 = put(&b, 7, 6);
        assert_eq!(b.read(r6).unwrap().unwrap(), vec![6u8; 7]);
        assert_eq!(b.read(r5).unwrap().unwrap(), vec![5u8; 5], "from the file");
    }

    #[test]
    fn a_body_read_from_the_buffer_is_a_view_of_it_and_the_file_gets_every_live_byte() {
        let (dir, b) = fresh();
        let r1 = put(&b, 10, 1);
        let r2 = put(&b, 20, 2);
        // A read shares the buffer's memory: two reads of one body see the same bytes,
        // and appends after it leave them as they were.
        let first = b.read(r1).unwrap().unwrap();
        assert_eq!(first, vec![1u8; 10]);
        let r3 = put(&b, 30, 3);
        assert_eq!(b.read(r3).unwrap().unwrap(), vec![3u8; 30]);
        let r4 = put(&b, 40, 4);
        let r5 = put(&b, 50, 5);
        assert_eq!((r3.offset, r4.offset, r5.offset), (30, 60, 100));
        let again = b.read(r1).unwrap().unwrap();
        assert_eq!(again.as_ptr(), first.as_ptr(), "not a copy");
        assert_eq!(b.read(r2).unwrap().unwrap(), vec![2u8; 20]);
        assert_eq!(b.read(r5).unwrap().unwrap(), vec![5u8; 50]);
        assert_eq!(b.position(), (1, 150));
        // The buffer is now in three parts ([1 2] [3] [4 5]) and an empty rest; the live
        // run [3 4] crosses two of them. A body past the buffer's end is not in it.
        b.release(&[r2, r5]);
        let past_the_end = BodyRef {
            file: 1,
            offset: 140,
            len: 20,
        };
        assert!(
            b.read(past_the_end).is_err(),
            "read from the file, not the buffer"
        );
        b.sync().unwrap();
        let file = std::fs::read(dir.path().join(file_name(1))).unwrap();
        let mut want = vec![1u8; 10];
        want.extend([0u8; 20]);
        want.extend([3u8; 30]);
        want.extend([4u8; 40]);
        want.extend([0u8; 50]);
        assert_eq!(file, want);
        // A view read before the buffer was written out still reads the same.
        assert_eq!(first, vec![1u8; 10]);
        // Appends go on after the written bytes, and read back from the new buffer.
        let r6 = put(&b, 5, 6);
        assert_eq!(r6.offset, 150);
        assert_eq!(b.read(r6).unwrap().unwrap(), vec![6u8; 5]);
        assert_eq!(b.read(r3).unwrap().unwrap(), vec![3u8; 30], "from the file");
    }

    #[test]
    fn a_live_run_from_a_shared_part_into_the_unread_rest_is_written_whole() {
        let (dir, b) = fresh();
        let r1 = put(&b, 10, 1);
        assert_eq!(b.read(r1).unwrap().unwrap(), vec![1u8; 10]);
        // Not read: it stays in the part of the buffer no reader shares.
        put(&b, 20, 2);
        b.sync().unwrap();
        let mut want = vec![1u8; 10];
        want.extend([2u8; 20]);
        assert_eq!(std::fs::read(dir.path().join(file_name(1))).unwrap(), want);
        assert_eq!(b.position(), (1, 30));
    }

    #[test]
    fn a_body_that_cannot_be_read_names_its_file() {
        let (dir, b) = fresh();
        let r = put(&b, 100, 1);
        b.sync().unwrap();
        let path = dir.path().join(file_name(1));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(50)
            .unwrap();
        let err = b.read(r).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        let err = b.pin().read(r).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn only_well_formed_names_are_body_files() {
        assert_eq!(file_id(&file_name(42)), Some(42));
        assert_eq!(file_id("42.body"), None);
        assert_eq!(file_id("000000000000004x.body"), None);
        assert_eq!(file_id("0000000000000042.bod"), None);
    }
}
