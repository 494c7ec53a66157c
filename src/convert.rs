//! Creating images and copying one virtual disk into another.
//!
//! Output files are built under a temporary name in the destination folder
//! and renamed into place only when complete, so a failed or interrupted
//! run never leaves a half-written image under the requested name.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::disk::{ExtentKind, VirtualDisk, is_zero};
use crate::error::{Error, ErrorKind, Hint, Result};
use crate::io::{FileStorage, Storage};
use crate::raw::RawDisk;
use crate::report::{DiskType, Format};
use crate::vhd::VhdBuilder;
use crate::vhdx::VhdxBuilder;

pub mod plan;

/// Bytes copied per step: a whole default VHD block.
pub const COPY_CHUNK: usize = 2 << 20;
/// Granularity of zero detection when writing: zero pieces of this size are
/// not written, so outputs stay sparse.
pub const ZERO_PIECE: usize = 64 << 10;

/// What to create.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Container format.
    pub format: Format,
    /// Disk type.
    pub disk_type: DiskType,
    /// Block size for sparse formats (format default when `None`).
    pub block_size: Option<u64>,
    /// Parent of a differencing image.
    pub parent: Option<PathBuf>,
    /// Recipients, cipher and origin record of an EVHD output.
    pub evhd: Option<crate::evhd::EvhdOptions>,
    /// Logical sector size (format default, or the parent's, when `None`).
    /// VHDX takes 512 or 4096; the other formats only 512.
    pub logical_sector_size: Option<u32>,
    /// Physical sector size (format default when `None`); VHDX only.
    pub physical_sector_size: Option<u32>,
}

impl ImageSpec {
    /// A spec with the format's default type.
    pub fn new(format: Format) -> Self {
        ImageSpec {
            format,
            disk_type: match format {
                Format::Raw => DiskType::Fixed,
                _ => DiskType::Dynamic,
            },
            block_size: None,
            parent: None,
            evhd: None,
            logical_sector_size: None,
            physical_sector_size: None,
        }
    }
}

/// A file being written under a temporary name; removed on drop unless
/// [`PendingFile::commit`] renamed it into place.
#[derive(Debug)]
pub struct PendingFile {
    tmp: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl PendingFile {
    /// Reserve a temporary name beside `dest` (registered in
    /// [`crate::unstable::pending`], so a signal removes the file), after removing the
    /// temporary files for `dest` that killed processes left (with a note).
    pub fn new(dest: &Path) -> Self {
        crate::pending::reclaim_stale_noted(dest);
        PendingFile {
            tmp: crate::pending::temp_path(dest),
            dest: dest.to_path_buf(),
            done: false,
        }
    }

    /// Create the temporary file with `create` (given its path), registered
    /// so that SIGINT, SIGTERM and SIGHUP remove it.
    pub fn create<T>(&self, create: impl FnOnce(&Path) -> T) -> T {
        crate::pending::create(&self.tmp, || create(&self.tmp))
    }

    /// The temporary path.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Rename into place, replacing an existing file only with `replace`:
    /// without it a file that appeared at the destination since the caller
    /// checked is an error naming it, and the temporary file is removed
    /// (see `crate::io::rename_into_place`).
    pub fn commit(mut self, replace: bool) -> Result<()> {
        // Checked again right before the rename: something other than a
        // regular file may have appeared at the destination meanwhile.
        crate::device::refuse_unless_replaceable(&self.dest, false)?;
        crate::pending::commit(&self.tmp, || {
            crate::io::rename_into_place(&self.tmp, &self.dest, replace)
        })
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::new(
                    ErrorKind::InvalidArgument,
                    "the file was created by another program while the image was being written; \
                     it was left as it is and the new image discarded",
                )
                .with_hint(Hint::ReplaceOutput)
                .with_path(&self.dest)
            } else {
                Error::io(e, "cannot rename the finished image into place").with_path(&self.dest)
            }
        })?;
        self.done = true;
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.done {
            crate::pending::discard(&self.tmp);
        }
    }
}

/// The storage of an image being built under a temporary name. Once the
/// build has failed and the file is about to be deleted, every further
/// change is dropped silently: dropping a disk writes back what it holds
/// (a VHDX empties its log, an EVHD commits), which is pointless for a file
/// about to go, fails again where the first error was a full disk, and
/// would print a warning about it beside the real error.
struct BuildStorage {
    inner: FileStorage,
    abandoned: Arc<AtomicBool>,
}

impl BuildStorage {
    fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::SeqCst)
    }
}

impl Storage for BuildStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if self.abandoned() {
            return Ok(());
        }
        self.inner.write_at(buf, offset)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        if self.abandoned() {
            return Ok(());
        }
        self.inner.set_len(len)
    }
    fn flush(&self) -> std::io::Result<()> {
        if self.abandoned() {
            return Ok(());
        }
        self.inner.flush()
    }
    fn is_writable(&self) -> bool {
        self.inner.is_writable()
    }
}

/// Create an image per `spec` of `size` bytes in `storage`; `path` is where
/// it will finally live (for relative parent locators).
pub fn create_in(
    storage: Box<dyn Storage>,
    path: Option<&Path>,
    spec: &ImageSpec,
    size: u64,
) -> Result<Box<dyn VirtualDisk>> {
    if spec.format != Format::Vhdx {
        if spec.logical_sector_size.is_some_and(|s| s != 512) {
            return Err(Error::invalid_argument(format!(
                "{} images have 512-byte sectors; only VHDX takes 4096",
                spec.format.as_str()
            )));
        }
        if spec.physical_sector_size.is_some() {
            return Err(Error::invalid_argument(format!(
                "{} images have no physical sector size setting; only VHDX does",
                spec.format.as_str()
            )));
        }
    }
    match spec.format {
        Format::Raw => {
            if spec.disk_type != DiskType::Fixed {
                return Err(Error::invalid_argument("raw images are always fixed"));
            }
            Ok(Box::new(RawDisk::create(storage, size)?))
        }
        Format::Vhd => {
            let mut b = VhdBuilder::new(size);
            if let Some(bs) = spec.block_size {
                let bs = u32::try_from(bs)
                    .map_err(|_| Error::invalid_argument("block size too large for VHD"))?;
                b = b.block_size(bs);
            }
            b = match spec.disk_type {
                DiskType::Fixed => b.fixed(),
                DiskType::Dynamic => b.dynamic(),
                DiskType::Differencing => {
                    let p = spec.parent.clone().ok_or_else(|| {
                        Error::invalid_argument("a differencing image needs a parent")
                    })?;
                    b.differencing(p)
                }
            };
            let mut d = b.create(storage, path)?;
            // A fresh image in a temporary file needs no per-block barriers:
            // it is synced once, before it is renamed into place.
            d.set_write_barriers(false);
            Ok(Box::new(d))
        }
        Format::Evhd => {
            let o = spec.evhd.as_ref().ok_or_else(|| {
                Error::invalid_argument("an EVHD needs at least one recipient")
                    .with_hint(Hint::Recipient)
            })?;
            if spec.disk_type != DiskType::Dynamic {
                return Err(Error::invalid_argument("EVHD images are always dynamic"));
            }
            let mut b = crate::evhd::EvhdBuilder::new(size)
                .cipher(o.cipher)
                .origin(o.origin);
            if o.origin.logical_sector_size == 4096 {
                b = b.sector_sizes(4096, o.origin.physical_sector_size.max(4096));
            }
            if let Some(bs) = spec.block_size {
                b = b.block_size(bs);
            }
            for (k, l) in &o.recipients {
                b = b.recipient(k.clone(), l);
            }
            if let Some(k) = &o.signer {
                b = b.signer(k.clone());
            }
            Ok(Box::new(b.create(storage, path.map(Path::to_path_buf))?))
        }
        Format::Vhdx => {
            let mut b = VhdxBuilder::new(size);
            if let Some(bs) = spec.block_size {
                let bs = u32::try_from(bs)
                    .map_err(|_| Error::invalid_argument("block size too large for VHDX"))?;
                b = b.block_size(bs);
            }
            if let Some(s) = spec.logical_sector_size {
                b = b.logical_sector_size(s);
            }
            if let Some(s) = spec.physical_sector_size {
                b = b.physical_sector_size(s);
            }
            b = match spec.disk_type {
                DiskType::Fixed => b.fixed(),
                DiskType::Dynamic => b.dynamic(),
                DiskType::Differencing => {
                    let p = spec.parent.clone().ok_or_else(|| {
                        Error::invalid_argument("a differencing image needs a parent")
                    })?;
                    b.differencing(p)
                }
            };
            Ok(Box::new(b.create(storage, path)?))
        }
    }
}

/// How [`create_file`] treats the destination.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutputOptions {
    /// Replace an existing file.
    pub overwrite: bool,
    /// Sync the new file to stable storage before renaming it into place
    /// (off by default, as in qemu-img: the system writes it back).
    pub sync: bool,
}

/// Create a new image file at `dest`, let `fill` write into it, then
/// (optionally sync and) rename it into place.
pub fn create_file(
    dest: &Path,
    spec: &ImageSpec,
    size: u64,
    out: OutputOptions,
    fill: impl FnOnce(&mut dyn VirtualDisk) -> Result<()>,
) -> Result<()> {
    let overwrite = out.overwrite;
    // A folder (or a name ending in `/`) is refused before anything is
    // written, not after the whole image was built and the rename failed.
    if dest.as_os_str().as_encoded_bytes().ends_with(b"/") || dest.is_dir() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "ends in '/' or is a directory, so it names a folder; give the path of the image \
             file to create (e.g. DIR/disk.vhdx)",
        )
        .with_path(dest));
    }
    // Only a regular file is ever replaced (not a link, device or FIFO).
    crate::device::refuse_unless_replaceable(dest, false)?;
    if !overwrite && dest.exists() {
        return Err(Error::new(ErrorKind::InvalidArgument, "the file exists")
            .with_hint(Hint::ReplaceOutput)
            .with_path(dest));
    }
    // Refuse to replace an image another program has open, and keep it
    // locked until it is replaced so none starts using it meanwhile.
    let _replaced = if overwrite {
        crate::io::lock_for_replace(dest)?
    } else {
        None
    };
    let pending = PendingFile::new(dest);
    let mut storage = pending
        .create(FileStorage::create_new)
        .map_err(|e| e.for_output(pending.path(), dest))?;
    if !out.sync {
        storage = storage.without_sync();
    }
    let abandoned = Arc::new(AtomicBool::new(false));
    let storage = BuildStorage {
        inner: storage,
        abandoned: abandoned.clone(),
    };
    let mut disk = create_in(Box::new(storage), Some(dest), spec, size)
        .map_err(|e| e.for_output(pending.path(), dest))?;
    if let Err(e) = fill(disk.as_mut()).and_then(|_| disk.close()) {
        // The temporary file is deleted: let the disk's drop write nothing
        // into it (that would fail again, e.g. on a full disk, and print a
        // second, confusing message about a file nobody keeps).
        abandoned.store(true, Ordering::SeqCst);
        drop(disk);
        return Err(e.for_output(pending.path(), dest));
    }
    drop(disk);
    pending.commit(overwrite)
}

/// Read `buf` from `disk` at `offset`; bytes past its end read as zeros.
fn read_or_zero(disk: &dyn VirtualDisk, buf: &mut [u8], offset: u64) -> Result<()> {
    let avail = disk
        .virtual_size()
        .saturating_sub(offset)
        .min(buf.len() as u64) as usize;
    if avail > 0 {
        disk.read_at(&mut buf[..avail], offset)?;
    }
    buf[avail..].fill(0);
    Ok(())
}

/// Which [`ZERO_PIECE`]-sized pieces of `buf` are all zeros.
fn zero_pieces(buf: &[u8]) -> Vec<bool> {
    buf.chunks(ZERO_PIECE).map(is_zero).collect()
}

/// Write the pieces of `buf` (at `offset`) that `zeros` marks as not zero
/// into a fresh disk, merging neighbouring pieces into one write. A buffer
/// without zero pieces is the disk's to use as scratch space.
fn write_nonzero(
    dst: &mut dyn VirtualDisk,
    buf: &mut [u8],
    zeros: &[bool],
    offset: u64,
) -> Result<()> {
    if zeros.contains(&true) {
        write_runs(dst, buf, zeros, offset)
    } else if let Some(fast) = dst.fast_paths_mut() {
        fast.write_in_place(buf, offset)
    } else {
        dst.write_at(buf, offset)
    }
}

/// Write the runs of pieces of `buf` that `zeros` marks as not zero.
fn write_runs(dst: &mut dyn VirtualDisk, buf: &[u8], zeros: &[bool], offset: u64) -> Result<()> {
    let mut run_start: Option<usize> = None;
    for (i, &zero) in zeros.iter().enumerate() {
        let pos = i * ZERO_PIECE;
        if zero {
            if let Some(s) = run_start.take() {
                dst.write_at(&buf[s..pos], offset + s as u64)?;
            }
        } else if run_start.is_none() {
            run_start = Some(pos);
        }
    }
    if let Some(s) = run_start {
        dst.write_at(&buf[s..], offset + s as u64)?;
    }
    Ok(())
}

/// Chunks read ahead of the consumer: enough to keep both cores busy
/// without holding much memory (READ_AHEAD * COPY_CHUNK bytes).
const READ_AHEAD: usize = 4;

/// A chunk read by [`read_pipelined`]: its offset, bytes, and which of its
/// [`ZERO_PIECE`]s are zeros (computed on the reading thread).
type Chunk = (u64, Vec<u8>, Vec<bool>);

/// How much of a disk's map a whole-disk pass asks for at a time: the
/// extents of one window are held at once, never the whole disk's, so a
/// fragmented source (a sparse raw file with millions of extents) is copied
/// in bounded memory.
pub const MAP_WINDOW: u64 = 1 << 30;

/// The extents of `src` from `start` to `end`, asked for one
/// [`MAP_WINDOW`] at a time as the iteration advances.
pub fn windowed_map(
    src: &dyn VirtualDisk,
    start: u64,
    end: u64,
) -> impl Iterator<Item = Result<crate::disk::Extent>> + Send + '_ {
    let mut pos = start;
    let mut pending = std::collections::VecDeque::new();
    let mut failed = false;
    std::iter::from_fn(move || {
        loop {
            if let Some(e) = pending.pop_front() {
                return Some(Ok(e));
            }
            if pos >= end || failed {
                return None;
            }
            let n = (end - pos).min(MAP_WINDOW);
            match src.map(pos, n) {
                Ok(extents) => pending.extend(extents),
                Err(e) => {
                    failed = true;
                    return Some(Err(e));
                }
            }
            pos += n;
        }
    })
}

/// Read `ranges` of `src` in order on a second thread, in pieces of at most
/// [`COPY_CHUNK`], and hand each piece with its offset and zero map to
/// `consume` on this thread, so reading and zero detection overlap with
/// whatever `consume` does (writing). The ranges are taken from the
/// iterator as the reading advances (a map found window by window); its
/// first error ends the copy.
pub fn read_pipelined(
    src: &dyn VirtualDisk,
    ranges: impl Iterator<Item = Result<(u64, u64)>> + Send,
    mut consume: impl FnMut(u64, &mut [u8], &[bool]) -> Result<()>,
) -> Result<()> {
    use std::sync::mpsc::sync_channel;
    let (full_tx, full_rx) = sync_channel::<Result<Chunk>>(READ_AHEAD);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(READ_AHEAD + 2);
    for _ in 0..READ_AHEAD + 2 {
        free_tx
            .send(vec![0u8; COPY_CHUNK])
            .expect("the channel has room for every buffer");
    }
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for range in ranges {
                let (start, len) = match range {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = full_tx.send(Err(e));
                        return;
                    }
                };
                let mut pos = start;
                while pos < start + len {
                    let Ok(mut buf) = free_rx.recv() else { return };
                    let n = (start + len - pos).min(COPY_CHUNK as u64) as usize;
                    buf.resize(n, 0);
                    let item = src.read_at(&mut buf, pos).map(|_| {
                        let zeros = zero_pieces(&buf);
                        (pos, buf, zeros)
                    });
                    let failed = item.is_err();
                    if full_tx.send(item).is_err() || failed {
                        return;
                    }
                    pos += n as u64;
                }
            }
        });
        for item in full_rx {
            let (pos, mut buf, zeros) = item?;
            consume(pos, &mut buf, &zeros)?;
            // The reader may have stopped; a lost buffer does not matter then.
            let _ = free_tx.send(buf);
        }
        Ok(())
    })
}

/// Copy every byte of `src` into the freshly created `dst` (which reads as
/// zeros), skipping ranges that read as zeros. `progress` gets bytes done.
pub fn copy_into(
    src: &dyn VirtualDisk,
    dst: &mut dyn VirtualDisk,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let size = src.virtual_size().min(dst.virtual_size());
    let ranges = windowed_map(src, 0, size)
        .filter(|e| !matches!(e, Ok(e) if e.kind == ExtentKind::Zero))
        .map(|e| e.map(|e| (e.start, e.length)));
    // A mapped source is read like any other, not lent to a disk that
    // copies writes (an encrypting one): lending saves no copy (the disk
    // copies the bytes into its own buffers instead of sealing a read
    // buffer in place) and loses the overlap of reading with sealing;
    // raw -> evhd through the CLI measured about a quarter slower with it.
    read_pipelined(src, ranges, |pos, buf, zeros| {
        write_nonzero(dst, buf, zeros, pos)?;
        progress(pos + buf.len() as u64);
        Ok(())
    })?;
    progress(size);
    Ok(())
}

/// Write into `dst`, a fresh differencing image over `base`, only the
/// sectors where `src` differs from `base`.
pub fn copy_delta(
    src: &dyn VirtualDisk,
    base: &dyn VirtualDisk,
    dst: &mut dyn VirtualDisk,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let size = src.virtual_size().min(dst.virtual_size());
    let sector = dst.logical_sector_size() as usize;
    let mut a = vec![0u8; COPY_CHUNK];
    let mut b = vec![0u8; COPY_CHUNK];
    let mut pos = 0u64;
    while pos < size {
        let n = (size - pos).min(COPY_CHUNK as u64) as usize;
        src.read_at(&mut a[..n], pos)?;
        read_or_zero(base, &mut b[..n], pos)?;
        if a[..n] != b[..n] {
            let mut s = 0;
            while s < n {
                let e = (s + sector).min(n);
                if a[s..e] == b[s..e] {
                    s = e;
                    continue;
                }
                let start = s;
                while s < n && a[s..(s + sector).min(n)] != b[s..(s + sector).min(n)] {
                    s = (s + sector).min(n);
                }
                dst.write_at(&a[start..s], pos + start as u64)?;
            }
        }
        pos += n as u64;
        progress(pos);
    }
    Ok(())
}

/// Stream the whole virtual disk as raw bytes to `out`.
pub fn stream_raw(
    src: &dyn VirtualDisk,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    read_pipelined(
        src,
        std::iter::once(Ok((0, src.virtual_size()))),
        |pos, buf, _| {
            out.write_all(buf)
                .map_err(|e| Error::io(e, "writing to the output stream"))?;
            progress(pos + buf.len() as u64);
            Ok(())
        },
    )?;
    out.flush()
        .map_err(|e| Error::io(e, "writing to the output stream"))
}

/// The first offset where `a` and `b` differ, or `None` when their content
/// is the same. Disks of different sizes differ at the shorter one's end.
/// Ranges that both disks' maps call zero are not read.
pub fn first_difference(a: &dyn VirtualDisk, b: &dyn VirtualDisk) -> Result<Option<u64>> {
    let size = a.virtual_size().min(b.virtual_size());
    let mut x = vec![0u8; COPY_CHUNK];
    let mut y = vec![0u8; COPY_CHUNK];
    let mut window = 0u64;
    while window < size {
        let end = (size - window).min(MAP_WINDOW) + window;
        for (start, len) in unequal_zero_ranges(a, b, window, end)? {
            let mut pos = start;
            while pos < start + len {
                let n = (start + len - pos).min(COPY_CHUNK as u64) as usize;
                a.read_at(&mut x[..n], pos)?;
                b.read_at(&mut y[..n], pos)?;
                if x[..n] != y[..n] {
                    let i = x[..n]
                        .iter()
                        .zip(&y[..n])
                        .position(|(p, q)| p != q)
                        .unwrap_or(0);
                    return Ok(Some(pos + i as u64));
                }
                pos += n as u64;
            }
        }
        window = end;
    }
    if a.virtual_size() != b.virtual_size() {
        return Ok(Some(size));
    }
    Ok(None)
}

/// The ranges of `start..end` that are not zero in both `a`'s and `b`'s
/// maps, in order, as `(start, length)`.
fn unequal_zero_ranges(
    a: &dyn VirtualDisk,
    b: &dyn VirtualDisk,
    start: u64,
    end: u64,
) -> Result<Vec<(u64, u64)>> {
    let zeros = |d: &dyn VirtualDisk| -> Result<Vec<(u64, u64)>> {
        Ok(d.map(start, end - start)?
            .into_iter()
            .filter(|e| e.kind == ExtentKind::Zero)
            .map(|e| (e.start.max(start), e.end().min(end)))
            .collect())
    };
    let (za, zb) = (zeros(a)?, zeros(b)?);
    // Intersect the two zero lists; the rest of the window is to be read.
    let mut both = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < za.len() && j < zb.len() {
        let (s, e) = (za[i].0.max(zb[j].0), za[i].1.min(zb[j].1));
        if s < e {
            both.push((s, e));
        }
        if za[i].1 < zb[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    let mut out = Vec::new();
    let mut pos = start;
    for (s, e) in both {
        if s > pos {
            out.push((pos, s - pos));
        }
        pos = pos.max(e);
    }
    if pos < end {
        out.push((pos, end - pos));
    }
    Ok(out)
}
