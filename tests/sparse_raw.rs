//! Sparse raw sources and files that cannot be images (issue 12 point 7).
//!
//! A raw file's holes (found with `SEEK_DATA`/`SEEK_HOLE`) are mapped as
//! zeros and never read: a 100 GiB sparse file holding 256 MiB converts by
//! reading its 256 MiB. That is shown without timing anything, two ways:
//! the library's copy through a storage that counts the bytes read from
//! it, and, for the command line, the page cache: a hole that is read (by
//! `pread` or through the memory map) leaves zero-filled pages of the file
//! in the cache, which `mincore` reports, while a hole never read leaves
//! none. `info` reports what the file system allocates.
//!
//! FIFOs, sockets, character devices and standard input given as IMAGE or
//! SRC fail at once with a message naming what they are; every wait is
//! bounded, so a hang fails the test instead of blocking the run.
#![cfg(unix)]

mod common;

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{code_out_err, s, vhdkit_bin, vhdkit_ok, vhdkit_ok_stdout};
use vhdkit::CipherId;
use vhdkit::FastPaths;
use vhdkit::KeyFile;
use vhdkit::convert::{self, ImageSpec};
use vhdkit::unstable::evhd::header::Origin;
use vhdkit::unstable::raw::RawDisk;
use vhdkit::{ExtentKind, Format, VirtualDisk};
use vhdkit::{FileStorage, MemStorage, Storage};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The size of the big sparse source.
const SIZE: u64 = 100 * GIB;
/// Each piece of data written into it.
const PIECE: u64 = 64 * MIB;

/// Where the pieces of data lie: aligned near the start, unaligned to any
/// block or sector size in the middle, and the last 64 MiB of the disk.
fn pieces() -> [(u64, u64); 4] {
    [
        (MIB, 1),
        (33 * GIB + 12345, 2),
        (70 * GIB + 3 * 4096, 3),
        (SIZE - PIECE, 4),
    ]
}

/// The content of the piece made with `seed`.
fn piece_data(seed: u64) -> Vec<u8> {
    common::random_bytes(PIECE as usize, seed)
}

/// A sparse file of `size` bytes at `path` holding `pieces` (offset, seed)
/// of [`PIECE`] bytes each.
fn make_sparse(path: &Path, size: u64, pieces: &[(u64, u64)], piece: u64) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for &(off, seed) in pieces {
        f.write_all_at(&common::random_bytes(piece as usize, seed), off)
            .unwrap();
    }
    f.sync_all().unwrap();
}

/// Whether the file system holding `path` reports its holes; otherwise
/// the test skips, except under CI where that is a failure.
fn reports_holes(path: &Path, expected_data: u64) -> bool {
    let f = File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let found = vhdkit::unstable::sparse::DataMap::scan(&f, 0, len)
        .unwrap()
        .map(|m| m.data_bytes());
    if found.is_some_and(|d| d <= expected_data + 16 * MIB) {
        return true;
    }
    let why = format!(
        "the file system of {} does not report holes (data found: {found:?})",
        path.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{why}, and CI requires it");
    }
    common::skip(&why);
    false
}

/// A folder for the big sparse source, on the file system of the build
/// folder rather than in `/tmp`: if holes were ever read again, a `/tmp`
/// on tmpfs would keep every page read in memory.
fn big_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// How many pages of the file at `path` the page cache holds, counting
/// only those outside `data` (offset, length) ranges.
fn cached_pages_outside(path: &Path, data: &[(u64, u64)]) -> u64 {
    let f = File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    let pages = len.div_ceil(page as usize);
    // SAFETY: a fresh read-only shared mapping of a file this test made;
    // it is never read through, only given to mincore, then unmapped.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED, "mmap {}", path.display());
    let mut vec = vec![0u8; pages];
    // SAFETY: `vec` has one byte per page of the mapping.
    let r = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
    let err = io::Error::last_os_error();
    // SAFETY: unmapping the mapping made above.
    unsafe { libc::munmap(addr, len) };
    assert_eq!(r, 0, "mincore: {err}");
    // The kernel's readahead may bring in up to a few MiB after a data
    // run that is read with pread (as `cat` would): that is the kernel's
    // doing, not a read of the holes, so those pages count as data.
    const READAHEAD_SLACK: u64 = 4 << 20;
    let in_data = |p: u64| {
        let (s, e) = (p * page, (p + 1) * page);
        data.iter()
            .any(|&(o, l)| s < o + l + READAHEAD_SLACK && o < e)
    };
    vec.iter()
        .enumerate()
        .filter(|&(i, &b)| b & 1 != 0 && !in_data(i as u64))
        .count() as u64
}

/// `vhdkit read` of `len` bytes at `off` of `img` (with extra arguments).
fn read(img: &Path, off: u64, len: u64, extra: &[&str]) -> Vec<u8> {
    let (o, l) = (off.to_string(), len.to_string());
    let mut args = vec!["read", s(img), "--offset", &o, "--length", &l];
    args.extend_from_slice(extra);
    vhdkit_ok_stdout(&args)
}

/// The allocated bytes `info --json` reports.
fn info_allocated(img: &Path) -> u64 {
    common::info_json(img)["allocated_bytes"].as_u64().unwrap()
}

#[test]
fn hundred_gib_sparse_raw_converts_only_its_data() {
    let dir = big_dir();
    let src = dir.path().join("sparse.raw");
    make_sparse(&src, SIZE, &pieces(), PIECE);
    if !reports_holes(&src, 4 * PIECE) {
        return;
    }
    let data: Vec<(u64, u64)> = pieces().iter().map(|&(o, _)| (o, PIECE)).collect();
    let before = cached_pages_outside(&src, &data);

    // info: what the file system allocates, about 256 MiB, not 100 GiB.
    let allocated = info_allocated(&src);
    assert!(
        (4 * PIECE..=4 * PIECE + 4 * MIB).contains(&allocated),
        "info reports {allocated} bytes allocated for 256 MiB of data"
    );
    let text = String::from_utf8(vhdkit_ok(["info", s(&src)])).unwrap();
    assert!(text.contains("virtual size  100 GiB"), "{text}");
    assert!(!text.contains("allocated     100 GiB"), "{text}");

    // map: the holes are zero runs, the pieces data.
    let map: serde_json::Value =
        serde_json::from_slice(&vhdkit_ok(["map", "--json", s(&src)])).unwrap();
    let data_bytes: u64 = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "data")
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert!(
        (4 * PIECE..=4 * PIECE + 4 * MIB).contains(&data_bytes),
        "map shows {data_bytes} bytes of data: {map}"
    );

    // Convert to dynamic VHDX, VHD and EVHD.
    let out = tempfile::tempdir().unwrap();
    let key = &common::test_key().1;
    let outputs: Vec<(PathBuf, Vec<&str>)> = vec![
        (out.path().join("d.vhdx"), vec![]),
        (out.path().join("d.vhd"), vec![]),
        (out.path().join("d.evhd"), vec!["--key", s(key)]),
    ];
    for (dst, _) in &outputs {
        let mut args = vec!["convert", "-q"];
        if dst.extension().unwrap() == "evhd" {
            args.extend(["--recipient", s(key)]);
        }
        args.extend([s(&src), s(dst)]);
        vhdkit_ok(&args);
    }

    // No page of a hole was read: the page cache holds none of them (it
    // holds the data just written, which is not counted).
    let after = cached_pages_outside(&src, &data);
    assert_eq!(
        after, before,
        "converting read holes of the sparse source: {after} pages of its holes are cached, {before} before"
    );

    let contents: Vec<Vec<u8>> = pieces().iter().map(|&(_, seed)| piece_data(seed)).collect();
    for (dst, extra) in &outputs {
        // The output stores the data, not 100 GiB of zeros.
        let stored = info_allocated(dst);
        assert!(
            (4 * PIECE..=4 * PIECE + 512 * MIB).contains(&stored),
            "{}: {stored} bytes allocated",
            dst.display()
        );
        // The output reads as the source: every piece, the bytes around
        // each, and samples of the holes.
        for (&(off, _), content) in pieces().iter().zip(&contents) {
            assert!(
                read(dst, off, PIECE, extra) == *content,
                "{}: the piece at {off} differs",
                dst.display()
            );
            let lo = off.saturating_sub(MIB);
            assert_eq!(
                read(dst, lo, off - lo, extra),
                vec![0u8; (off - lo) as usize]
            );
            let hi = (off + PIECE + MIB).min(SIZE);
            let gap = hi - (off + PIECE);
            assert_eq!(read(dst, off + PIECE, gap, extra), vec![0u8; gap as usize]);
        }
        for g in [0, 10, 50, 69, 99] {
            assert_eq!(
                read(dst, g * GIB, MIB, extra),
                vec![0u8; MIB as usize],
                "{}: the hole at {g} GiB",
                dst.display()
            );
        }
    }

    // Reads of the source itself: zeros in holes, data in the pieces.
    let off = pieces()[1].0;
    assert!(read(&src, off, PIECE, &[]) == contents[1]);
    assert_eq!(read(&src, 50 * GIB, 4 * MIB, &[]), vec![0u8; 4 << 20]);
    let edge = read(&src, off - 100, 200, &[]);
    assert_eq!(&edge[..100], &[0u8; 100][..]);
    assert_eq!(&edge[100..], &contents[1][..100]);
}

/// A storage that counts the bytes read from it and never lends its
/// mapping, over a file.
struct Counting {
    inner: FileStorage,
    read: Arc<AtomicU64>,
}

impl Storage for Counting {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn is_writable(&self) -> bool {
        self.inner.is_writable()
    }
    fn data_runs(&self, offset: u64, len: u64) -> io::Result<Option<Vec<(u64, u64)>>> {
        self.inner.data_runs(offset, len)
    }
}

#[test]
fn the_copy_engine_reads_only_the_data_of_a_sparse_source() {
    let dir = big_dir();
    let src = dir.path().join("sparse.raw");
    let size = 16 * GIB;
    let piece = 4 * MIB;
    let layout = [(0, 7), (5 * GIB + 777, 8), (size - piece, 9)];
    make_sparse(&src, size, &layout, piece);
    if !reports_holes(&src, 3 * piece) {
        return;
    }
    let read = Arc::new(AtomicU64::new(0));
    let storage = Counting {
        inner: FileStorage::open(&src, false).unwrap(),
        read: read.clone(),
    };
    let disk = RawDisk::open(Box::new(storage), Some(src.clone())).unwrap();
    let map = disk.map(0, size).unwrap();
    assert_eq!(map.iter().filter(|e| e.kind == ExtentKind::Data).count(), 3);
    assert_eq!(map.iter().map(|e| e.length).sum::<u64>(), size);

    for format in [Format::Vhdx, Format::Vhd] {
        read.store(0, Ordering::Relaxed);
        let mut dst = convert::create_in(
            Box::new(MemStorage::new()),
            None,
            &ImageSpec::new(format),
            size,
        )
        .unwrap();
        convert::copy_into(&disk, dst.as_mut(), &mut |_| {}).unwrap();
        let n = read.load(Ordering::Relaxed);
        // The pieces, rounded out to pages, and nothing else.
        assert!(
            (3 * piece..=3 * piece + 64 * 1024).contains(&n),
            "{format:?}: {n} bytes read from a 16 GiB source holding {} bytes",
            3 * piece
        );
        for &(off, seed) in &layout {
            let mut got = vec![0u8; piece as usize];
            dst.read_at(&mut got, off).unwrap();
            assert!(got == common::random_bytes(piece as usize, seed), "{off}");
        }
        let mut hole = vec![1u8; MIB as usize];
        dst.read_at(&mut hole, 8 * GIB).unwrap();
        assert!(hole.iter().all(|&b| b == 0));

        // Comparing skips what both maps call zero: the source's holes
        // under the copy's unallocated blocks are not read (at most the
        // copy's allocated blocks around the pieces are).
        read.store(0, Ordering::Relaxed);
        assert_eq!(
            convert::first_difference(&disk, dst.as_ref()).unwrap(),
            None
        );
        let n = read.load(Ordering::Relaxed);
        assert!(
            n <= 256 * MIB,
            "{format:?}: compare read {n} bytes of a 16 GiB source"
        );
    }

    // An encrypting output of a mapped source reads only its data: none
    // of the holes' pages is touched.
    let data: Vec<(u64, u64)> = layout.iter().map(|&(o, _)| (o, piece)).collect();
    let before = cached_pages_outside(&src, &data);
    let mapped = RawDisk::open(
        Box::new(FileStorage::open(&src, false).unwrap()),
        Some(src.clone()),
    )
    .unwrap();
    assert!(mapped.mapped(0, size as usize).is_some());
    let key = KeyFile::read(&common::test_key().1).unwrap();
    let mut spec = ImageSpec::new(Format::Evhd);
    spec.evhd = Some(vhdkit::EvhdOptions {
        recipients: vec![(key.public().clone(), "test".into())],
        cipher: CipherId::Aes256Gcm,
        origin: Origin::of(&mapped.info()),
        signer: None,
    });
    let mut dst = convert::create_in(Box::new(MemStorage::new()), None, &spec, size).unwrap();
    assert!(dst.fast_paths().is_some_and(|f| f.copies_writes()));
    convert::copy_into(&mapped, dst.as_mut(), &mut |_| {}).unwrap();
    let after = cached_pages_outside(&src, &data);
    assert_eq!(after, before, "the lent copy touched pages of the holes");
    let mut got = vec![0u8; piece as usize];
    dst.read_at(&mut got, layout[1].0).unwrap();
    assert!(got == common::random_bytes(piece as usize, layout[1].1));
}

#[test]
fn raw_map_and_reads_follow_holes_with_unaligned_edges() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("small.raw");
    let size = 64 * MIB;
    make_sparse(&src, size, &[(3 * MIB + 100, 11)], MIB);
    if !reports_holes(&src, MIB) {
        return;
    }
    let disk = common::open(&src);
    // The data run covers the piece, rounded out to pages at most.
    let map = disk.map(0, size).unwrap();
    let data: Vec<_> = map.iter().filter(|e| e.kind == ExtentKind::Data).collect();
    assert_eq!(data.len(), 1, "{map:?}");
    assert!(data[0].start <= 3 * MIB + 100 && data[0].end() >= 4 * MIB + 100);
    assert!(data[0].length <= MIB + 8192, "{map:?}");
    // A window of the map is cut to the window.
    let w = disk.map(3 * MIB, 4096).unwrap();
    assert_eq!(w.iter().map(|e| e.length).sum::<u64>(), 4096);
    // Reads across a hole's edge, in every size.
    let expect = {
        let mut v = vec![0u8; size as usize];
        v[(3 * MIB + 100) as usize..(4 * MIB + 100) as usize]
            .copy_from_slice(&common::random_bytes(MIB as usize, 11));
        v
    };
    for (off, len) in [
        (0, 2 * MIB),
        (3 * MIB - 4096, 8192),
        (3 * MIB, 1 << 17),
        (4 * MIB, 1 << 17),
        (3 * MIB + 50, 100),
        (0, size),
    ] {
        let mut buf = vec![7u8; len as usize];
        disk.read_at(&mut buf, off).unwrap();
        assert!(
            buf == expect[off as usize..(off + len) as usize],
            "read {len} at {off}"
        );
    }
}

/// Run `vhdkit args` with `stdin`, killing it if it runs past a bound
/// that is there only to turn a hang into a failure: (exit code, stderr).
fn run_bounded(args: &[&str], stdin: Stdio) -> (i32, String) {
    let mut child = Command::new(vhdkit_bin())
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let bound = Duration::from_secs(30);
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(!err.contains("panicked"), "vhdkit {args:?} panicked: {err}");
            return (st.code().unwrap_or(-1), err);
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vhdkit {args:?} did not finish (blocked?); killed it");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every command that reads an image, with `img` as its IMAGE (SRC for
/// convert, A for compare) and the exit code of its errors.
fn commands<'a>(img: &'a str, other: &'a str, dst: &'a str) -> Vec<(Vec<&'a str>, i32)> {
    vec![
        (vec!["info", img], 1),
        (vec!["check", img], 1),
        (vec!["map", img], 1),
        (vec!["read", img, "--offset", "0", "--length", "512"], 1),
        (vec!["convert", "-q", img, dst], 1),
        (vec!["convert", "-q", img, "-"], 1),
        (vec!["compare", img, other], 2),
        (vec!["compare", other, img], 2),
        (
            vec![
                "write",
                img,
                "--offset",
                "0",
                "--pattern",
                "1",
                "--length",
                "1",
            ],
            1,
        ),
    ]
}

#[test]
fn special_files_as_image_fail_at_once_naming_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.raw");
    common::write_raw(&other, &vec![0u8; 1 << 20]);
    let dst = dir.path().join("out.vhdx");

    // A FIFO with no writer: opening it for reading would wait forever.
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // A socket with a listener.
    let sock = dir.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();

    let cases: Vec<(String, &str)> = vec![
        (s(&fifo).to_string(), "is a FIFO"),
        (s(&sock).to_string(), "is a socket"),
        ("/dev/zero".to_string(), "is a character device"),
        ("/dev/null".to_string(), "is a character device"),
    ];
    for (img, kind) in &cases {
        for (args, code) in commands(img, s(&other), s(&dst)) {
            let (got, err) = run_bounded(&args, Stdio::null());
            assert_eq!(got, code, "vhdkit {args:?}: {err}");
            assert!(
                err.contains(&format!("{img}: {kind}"))
                    && err.contains("seekable file or block device"),
                "vhdkit {args:?}: {err}"
            );
        }
        assert!(!dst.exists());
    }
    // The FIFO and the socket are left as they were.
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(std::fs::metadata(&sock).unwrap().file_type().is_socket());

    // Standard input as a pipe that stays open and empty (a reader would
    // wait for it), named `-` or /dev/stdin.
    for (img, says) in [
        ("-", "standard input"),
        ("/dev/stdin", "/dev/stdin: is a FIFO"),
    ] {
        for (args, code) in commands(img, s(&other), s(&dst)) {
            let (mut reader, writer) = io::pipe().unwrap();
            let (got, err) = run_bounded(&args, Stdio::from(reader.try_clone().unwrap()));
            drop(writer);
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest).unwrap();
            assert_eq!(got, code, "vhdkit {args:?} < pipe: {err}");
            assert!(err.contains(says), "vhdkit {args:?} < pipe: {err}");
        }
    }
    assert!(!dst.exists());

    // A file named `-` is a file like any other.
    let named = dir.path().join("-");
    common::write_raw(&named, &[5u8; 4096]);
    let out = Command::new(vhdkit_bin())
        .current_dir(dir.path())
        .args(["read", "-", "--offset", "0", "--length", "4096"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (code, _, err) = code_out_err(&out);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.stdout, vec![5u8; 4096]);
    // So is a regular file given as standard input through /dev/stdin.
    let out = Command::new(vhdkit_bin())
        .args(["read", "/dev/stdin", "--offset", "0", "--length", "4096"])
        .stdin(File::open(&named).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, vec![5u8; 4096]);
}

/// Detaches a loop device on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn block_device_as_source_reads_its_whole_size() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("backing.raw");
    let content = common::mixed_content(8 << 20, 21);
    common::write_raw(&img, &content);
    // Only root can attach a loop device; elsewhere this test says why it
    // does nothing.
    let attached = Command::new("losetup")
        .args(["-f", "--show", "-r", s(&img)])
        .stderr(Stdio::null())
        .output();
    let dev = match attached {
        Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap().trim().to_string(),
        _ => {
            let why = "cannot attach a loop device (needs root and losetup)";
            common::skip(why);
            return;
        }
    };
    let _detach = Loop(dev.clone());
    let info = common::info_json(Path::new(&dev));
    assert_eq!(info["virtual_size"], content.len() as u64, "{info}");
    let dst = dir.path().join("copy.vhdx");
    vhdkit_ok(["convert", "-q", &dev, s(&dst)]);
    assert!(common::read_image(&dst) == content);
    let mut out = Vec::new();
    let mut child = Command::new(vhdkit_bin())
        .args(["read", &dev, "--offset", "0", "--length", "8M"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(out == content);
}

/// A raw source with more extents than the old 65536-run cap of the data
/// map: every command leaves the source's allocation as it was (on tmpfs a
/// hole read through a memory map is allocated, so a command that reads a
/// hole there grows `st_blocks`), and the converted image holds every byte.
#[test]
fn fragmented_sparse_source_is_never_allocated_by_reading_it() {
    use std::os::unix::fs::MetadataExt;
    // tmpfs shows a hole that was read as a grown allocation; elsewhere the
    // test still checks the content.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let src = dir.path().join("frag.raw");
    // One byte every 8 KiB: a hole of at least a page between any two.
    const STRIDE: u64 = 8192;
    const EXTENTS: u64 = 70_000;
    let size = EXTENTS * STRIDE;
    let f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&src)
        .unwrap();
    f.set_len(size).unwrap();
    for i in 0..EXTENTS {
        f.write_all_at(&[(i % 251) as u8 + 1], i * STRIDE).unwrap();
    }
    drop(f);
    let blocks = || std::fs::metadata(&src).unwrap().blocks();
    let before = blocks();
    if before * 512 >= size {
        common::skip("this file system stores no holes");
        return;
    }
    let dst = dir.path().join("frag.vhdx");
    vhdkit_ok(["info", s(&src)]);
    assert_eq!(blocks(), before, "info changed the source's allocation");
    vhdkit_ok(["map", s(&src)]);
    assert_eq!(blocks(), before, "map changed the source's allocation");
    vhdkit_ok(["convert", s(&src), s(&dst)]);
    assert_eq!(blocks(), before, "convert changed the source's allocation");
    vhdkit_ok(["compare", s(&src), s(&dst)]);
    assert_eq!(blocks(), before, "compare changed the source's allocation");
    // The copy holds every byte: the first, one in the middle, the last,
    // and the zeros between.
    let disk = common::open(&dst);
    for i in [0, 1, EXTENTS / 2, EXTENTS - 1] {
        let mut b = [0xffu8; 2];
        disk.read_at(&mut b, i * STRIDE).unwrap();
        assert_eq!(b, [(i % 251) as u8 + 1, 0], "extent {i}");
    }
    let mut tail = vec![0xffu8; (STRIDE - 1) as usize];
    disk.read_at(&mut tail, size - STRIDE + 1).unwrap();
    assert!(tail.iter().all(|&b| b == 0));
}
