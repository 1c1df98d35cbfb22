//! The file operations the log uses, behind a trait: [`RealFs`] is the operating system;
//! [`SimFs`] is an in-memory disk that separates what was written from what was synced,
//! so that tests can cut the power at any moment and restart the real log code on what a
//! disk would have kept (`crates/wal/tests/power_loss.rs`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

/// File-system operations of the log. Paths are those the log builds from its directory.
pub trait Fs: fmt::Debug + Send + Sync + 'static {
    fn is_dir(&self, path: &Path) -> bool;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names of the entries of `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates `path` (or empties it) and opens it for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Opens an existing file to append to it.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Cuts `path` to `len` bytes and syncs it.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (creates, renames, removes) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file of an [`Fs`].
pub trait FsFile: Send {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// fdatasync: the bytes written so far are durable.
    fn sync_data(&mut self) -> io::Result<()>;
    /// fsync: the bytes and the metadata are durable.
    fn sync_all(&mut self) -> io::Result<()>;
}

/// The operating system's file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

impl Fs for RealFs {
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(file))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(OpenOptions::new().append(true).open(path)?))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl FsFile for File {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        Write::write_all(self, bytes)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        File::sync_all(self)
    }
}

/// An in-memory disk with a page cache: writes and directory changes are visible at once
/// but survive a power cut only once synced (the file with `sync_data`/`sync_all`, its
/// name with `sync_dir` of its directory). [`SimFs::power_cut`] freezes it — every later
/// operation fails, as on a machine that lost power — and returns what the disk kept: every
/// synced byte and name, and of each file's unsynced appended tail a seeded prefix, whose
/// last bytes may be torn (garbage). Storage faults can be injected: a failing sync, a
/// full disk.
#[derive(Clone, Default)]
pub struct SimFs {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// File contents by inode.
    files: HashMap<u64, SimFile>,
    next_inode: u64,
    /// Names as they are now.
    names: BTreeMap<PathBuf, u64>,
    /// Names as the disk has them: as of the last `sync_dir` of their directory.
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: Vec<PathBuf>,
    cut: bool,
    /// Operations so far (every call of [`Fs`] and [`FsFile`]).
    ops: u64,
    /// `(operation count, cut)`: the cut happens when `ops` reaches the count, before
    /// that operation takes effect.
    scheduled_cut: Option<(u64, Cut)>,
    /// The disk as it came back up after a scheduled cut.
    after_cut: Option<SimFs>,
    /// Syncs that will fail, counted down; 0 = none.
    fail_syncs: u32,
    /// Bytes that may still be written before writes fail with "no space".
    space_left: Option<u64>,
    /// When each file sync completed.
    syncs: Vec<Instant>,
}

#[derive(Clone, Default)]
struct SimFile {
    content: Vec<u8>,
    /// What the disk holds.
    durable: Vec<u8>,
}

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("SimFs")
            .field("files", &inner.names.keys().collect::<Vec<_>>())
            .field("cut", &inner.cut)
            .finish()
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

fn powered_off() -> io::Error {
    io::Error::other("simulated power cut: the disk is gone")
}

/// How a process life ends on a [`SimFs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The machine loses power: only what was synced is sure to be kept; of each unsynced
    /// tail, a prefix chosen by the seed, whose last sector may be torn.
    Power { seed: u64 },
    /// The process is killed (SIGKILL): everything written to the OS stays, synced or not;
    /// a later power cut can still lose what was never synced.
    Process,
}

/// A small deterministic generator (splitmix64) for the power cut's choices.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

impl SimFs {
    pub fn new() -> SimFs {
        SimFs::default()
    }

    /// Cuts the power: from now on every operation on this disk (and on files opened from
    /// it) fails. Returns the disk as it comes back up, a fresh `SimFs`. Which part of each
    /// unsynced tail reached the disk, and whether its last sector is torn, follows `seed`.
    pub fn power_cut(&self, seed: u64) -> SimFs {
        self.cut(Cut::Power { seed })
    }

    /// Ends the life now, as `cut` says: every later operation on this disk fails.
    /// Returns the disk the next process sees.
    pub fn cut(&self, cut: Cut) -> SimFs {
        let mut inner = self.inner.lock();
        inner.cut = true;
        inner.image(cut)
    }

    /// Ends the life (see [`Cut`]) just before operation number `ops` from now (0 = the
    /// next one), which then fails like every later one. [`SimFs::after_cut`] returns the disk as it
    /// comes back up. Lands the cut anywhere in the log's own sequence of writes, syncs,
    /// renames and directory syncs, also inside its writer thread.
    pub fn schedule_cut(&self, ops: u64, cut: Cut) {
        let mut inner = self.inner.lock();
        inner.scheduled_cut = Some((inner.ops + ops, cut));
    }

    /// The disk after a cut scheduled with [`SimFs::schedule_cut`], once it happened.
    pub fn after_cut(&self) -> Option<SimFs> {
        self.inner.lock().after_cut.clone()
    }

    /// Operations so far.
    pub fn ops(&self) -> u64 {
        self.inner.lock().ops
    }
}

impl Inner {
    /// What the next process finds after `cut` now; see [`Cut`].
    fn image(&self, cut: Cut) -> SimFs {
        let inner = self;
        let seed = match cut {
            Cut::Power { seed } => seed,
            Cut::Process => {
                return SimFs {
                    inner: Arc::new(Mutex::new(Inner {
                        files: inner.files.clone(),
                        next_inode: inner.next_inode,
                        names: inner.names.clone(),
                        durable_names: inner.durable_names.clone(),
                        dirs: inner.dirs.clone(),
                        ..Inner::default()
                    })),
                }
            }
        };
        let mut mix = Mix(seed);
        let mut files = HashMap::new();
        let mut names = BTreeMap::new();
        for (path, &inode) in &inner.durable_names {
            let file = &inner.files[&inode];
            let mut kept = file.durable.clone();
            if file.content.len() > kept.len() && file.content.starts_with(&kept) {
                let tail = &file.content[kept.len()..];
                let keep = mix.below(tail.len() as u64 + 1) as usize;
                let start = kept.len();
                kept.extend_from_slice(&tail[..keep]);
                // A torn sector: some of the last kept bytes are not what was written.
                if keep > 0 && mix.below(3) == 0 {
                    let torn = 1 + mix.below(keep.min(512) as u64) as usize;
                    for byte in &mut kept[start + keep - torn..] {
                        *byte = mix.next() as u8;
                    }
                }
            }
            files.insert(
                inode,
                SimFile {
                    durable: kept.clone(),
                    content: kept,
                },
            );
            names.insert(path.clone(), inode);
        }
        SimFs {
            inner: Arc::new(Mutex::new(Inner {
                files,
                next_inode: inner.next_inode,
                durable_names: names.clone(),
                names,
                dirs: inner.dirs.clone(),
                ..Inner::default()
            })),
        }
    }
}

impl SimFs {
    /// The next `count` syncs (file or directory) fail with an I/O error.
    pub fn fail_syncs(&self, count: u32) {
        self.inner.lock().fail_syncs = count;
    }

    /// After `bytes` more bytes, writes fail with "no space left on device".
    pub fn limit_space(&self, bytes: Option<u64>) {
        self.inner.lock().space_left = bytes;
    }

    /// When each successful file sync returned, oldest first.
    pub fn sync_times(&self) -> Vec<Instant> {
        self.inner.lock().syncs.clone()
    }

    /// A file's current bytes (what a reader sees, synced or not).
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let inner = self.inner.lock();
        let inode = inner.names.get(path)?;
        Some(inner.files[inode].content.clone())
    }

    /// Replaces a file's bytes, durably (for tests that damage a log).
    pub fn set_contents(&self, path: &Path, bytes: &[u8]) {
        let mut inner = self.inner.lock();
        let inode = match inner.names.get(path) {
            Some(&inode) => inode,
            None => inner.new_inode(),
        };
        inner.names.insert(path.to_path_buf(), inode);
        inner.durable_names.insert(path.to_path_buf(), inode);
        inner.files.insert(
            inode,
            SimFile {
                content: bytes.to_vec(),
                durable: bytes.to_vec(),
            },
        );
    }
}

impl Inner {
    /// Counts the operation; fails it if the power is (or now goes) off.
    fn check(&mut self) -> io::Result<()> {
        if let Some((at, cut)) = self.scheduled_cut {
            if self.ops >= at && !self.cut {
                self.cut = true;
                self.after_cut = Some(self.image(cut));
            }
        }
        self.ops += 1;
        if self.cut {
            Err(powered_off())
        } else {
            Ok(())
        }
    }

    fn new_inode(&mut self) -> u64 {
        self.next_inode += 1;
        self.next_inode
    }

    fn inode(&self, path: &Path) -> io::Result<u64> {
        self.names.get(path).copied().ok_or_else(|| not_found(path))
    }

    fn sync_fails(&mut self) -> bool {
        if self.fail_syncs > 0 {
            self.fail_syncs -= 1;
            true
        } else {
            false
        }
    }
}

struct SimHandle {
    inner: Arc<Mutex<Inner>>,
    inode: u64,
}

impl Fs for SimFs {
    fn is_dir(&self, path: &Path) -> bool {
        self.inner.lock().dirs.iter().any(|dir| dir == path)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut inner = self.inner.lock();
        inner.check()?;
        if !inner.dirs.iter().any(|dir| dir == path) {
            inner.dirs.push(path.to_path_buf());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut inner = self.inner.lock();
        inner.check()?;
        if !inner.dirs.iter().any(|d| d == dir) {
            return Err(not_found(dir));
        }
        Ok(inner
            .names
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut inner = self.inner.lock();
        inner.check()?;
        Ok(inner.files[&inner.inode(path)?].content.clone())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let mut inner = self.inner.lock();
        inner.check()?;
        let inode = inner.new_inode();
        inner.files.insert(inode, SimFile::default());
        inner.names.insert(path.to_path_buf(), inode);
        Ok(Box::new(SimHandle {
            inner: Arc::clone(&self.inner),
            inode,
        }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let mut inner = self.inner.lock();
        inner.check()?;
        let inode = inner.inode(path)?;
        Ok(Box::new(SimHandle {
            inner: Arc::clone(&self.inner),
            inode,
        }))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut inner = self.inner.lock();
        inner.check()?;
        let inode = inner.inode(path)?;
        if inner.sync_fails() {
            return Err(io::Error::other("injected sync failure"));
        }
        let file = inner.files.get_mut(&inode).ok_or_else(|| not_found(path))?;
        file.content
            .resize(usize::try_from(len).unwrap_or(usize::MAX), 0);
        file.durable = file.content.clone();
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut inner = self.inner.lock();
        inner.check()?;
        let inode = inner.names.remove(from).ok_or_else(|| not_found(from))?;
        inner.names.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut inner = self.inner.lock();
        inner.check()?;
        inner.names.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut inner = self.inner.lock();
        inner.check()?;
        if inner.sync_fails() {
            return Err(io::Error::other("injected sync failure"));
        }
        let Inner {
            names,
            durable_names,
            ..
        } = &mut *inner;
        durable_names.retain(|path, _| path.parent() != Some(dir));
        for (path, &inode) in names.iter() {
            if path.parent() == Some(dir) {
                durable_names.insert(path.clone(), inode);
            }
        }
        Ok(())
    }
}

impl FsFile for SimHandle {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut inner = self.inner.lock();
        inner.check()?;
        if let Some(left) = inner.space_left {
            let len = bytes.len() as u64;
            if len > left {
                // As a real file system may: part of the write lands, then ENOSPC.
                let part = usize::try_from(left).unwrap_or(usize::MAX);
                inner.space_left = Some(0);
                if let Some(file) = inner.files.get_mut(&self.inode) {
                    file.content.extend_from_slice(&bytes[..part]);
                }
                return Err(io::Error::from_raw_os_error(28));
            }
            inner.space_left = Some(left - len);
        }
        if let Some(file) = inner.files.get_mut(&self.inode) {
            file.content.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut inner = self.inner.lock();
        inner.check()?;
        if inner.sync_fails() {
            return Err(io::Error::other("injected sync failure"));
        }
        if let Some(file) = inner.files.get_mut(&self.inode) {
            if file.content.starts_with(&file.durable) {
                let from = file.durable.len();
                let tail = file.content[from..].to_vec();
                file.durable.extend_from_slice(&tail);
            } else {
                file.durable = file.content.clone();
            }
        }
        inner.syncs.push(Instant::now());
        Ok(())
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}
