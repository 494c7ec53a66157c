//! Image locking between processes (issue 11): a writer holds an exclusive
//! lock, readers and parents shared locks; a second writer, or a reader
//! beside a writer, gets the in-use error; `-U/--force-share` inspects an
//! image in use; a killed holder releases its lock.
//!
//! A real `vhdkit write` holds the image: its `--input` is a FIFO that this
//! test keeps open, so the writer has the image open (and locked) and waits
//! for its data until the test sends it. Every wait is bounded.
#![cfg(unix)]

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::procs::{
    self, WAIT_LIMIT, convert_reader, drain, kill_if_running, open_fifo, wait_bounded,
};
use common::{code_out_err, random_bytes, s, test_key, vhdkit, vhdkit_bin, vhdkit_ok};
use vhdkit::{ErrorKind, OpenOptions};

/// Offset (1 MiB) where the holding writer writes.
const A_OFFSET: u64 = 1 << 20;
/// Offset (8 MiB) where a refused second writer tries to write.
const B_OFFSET: u64 = 8 << 20;
/// Bytes the holding writer writes (less than a pipe's buffer, so the
/// test's write into the FIFO never waits).
const A_LEN: usize = 32 << 10;

/// Whether some open of `path` holds a lock that conflicts with `exclusive`
/// (tested from this process with a fresh open, released at once).
fn is_locked(path: &Path, exclusive: bool) -> bool {
    let f = File::open(path).unwrap();
    let r = if exclusive {
        f.try_lock()
    } else {
        f.try_lock_shared()
    };
    match r {
        Ok(()) => false,
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(std::fs::TryLockError::Error(e)) => panic!("lock test on {}: {e}", path.display()),
    }
}

/// A `vhdkit write` process that has the image open for writing and waits
/// for its input on a FIFO this test holds.
struct Holder {
    child: Child,
    fifo: Option<File>,
    stderr: Option<mpsc::Receiver<Vec<u8>>>,
    image: PathBuf,
}

impl Holder {
    /// Start `vhdkit write IMAGE --offset A_OFFSET --input FIFO EXTRA...`
    /// and wait until it holds the image's exclusive lock.
    fn start(image: &Path, extra: &[&str]) -> Holder {
        let fifo_path = image.with_extension("fifo");
        let fifo = open_fifo(&fifo_path);
        let mut child = Command::new(vhdkit_bin())
            .args(["write", s(image), "--offset", &A_OFFSET.to_string()])
            .args(["--input", s(&fifo_path)])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = drain(child.stderr.take().unwrap());
        let mut h = Holder {
            child,
            fifo: Some(fifo),
            stderr: Some(stderr),
            image: image.to_path_buf(),
        };
        let start = Instant::now();
        while !is_locked(image, false) {
            if let Some(st) = h.child.try_wait().unwrap() {
                panic!(
                    "the holding writer exited ({st}) before locking {}: {}",
                    image.display(),
                    h.stderr_text()
                );
            }
            assert!(
                start.elapsed() < WAIT_LIMIT,
                "the holding writer never took an exclusive lock on {}",
                image.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr_text(&mut self) -> String {
        let v = self
            .stderr
            .take()
            .and_then(|rx| rx.recv_timeout(WAIT_LIMIT).ok())
            .unwrap_or_default();
        String::from_utf8_lossy(&v).into_owned()
    }

    /// Send `data` and end the input; the writer writes it and exits 0.
    fn finish(mut self, data: &[u8]) {
        let mut fifo = self.fifo.take().unwrap();
        fifo.write_all(data).unwrap();
        drop(fifo);
        let st = wait_bounded(&mut self.child, "the holding writer");
        let err = self.stderr_text();
        assert!(st.success(), "the holding writer failed ({st}): {err}");
        assert!(!is_locked(&self.image, true), "lock left after exit");
    }

    /// `kill -9` the writer while it holds the lock.
    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        let st = wait_bounded(&mut self.child, "the killed writer");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(libc::SIGKILL)
        );
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        kill_if_running(&mut self.child);
    }
}

/// `vhdkit ARGS` must fail with exit 1 and an in-use error naming `image`
/// (and the holding process, where /proc/locks lists it).
fn assert_in_use(args: &[&str], image: &Path, holder: Option<u32>) {
    let err = procs::assert_in_use(args, image);
    if let Some(pid) = holder
        && proc_locks_lists(pid)
    {
        assert!(
            err.contains(&format!(" {pid} (vhdkit)")),
            "vhdkit {args:?}: the error does not name holder {pid}: {err}"
        );
    }
}

/// Whether /proc/locks shows a flock held by `pid` (Linux only).
fn proc_locks_lists(pid: u32) -> bool {
    std::fs::read_to_string("/proc/locks").is_ok_and(|t| {
        t.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 4 && f[1] == "FLOCK" && f[4] == pid.to_string()
        })
    })
}

/// A fresh image of `kind` ("vhd", "vhdx" or "evhd") of 16 MiB in `dir`,
/// and the extra arguments (the key) commands need to read it.
fn make_image(dir: &Path, kind: &str) -> (PathBuf, Vec<String>) {
    let img = dir.join(format!("disk.{kind}"));
    match kind {
        "evhd" => {
            let raw = dir.join("src.raw");
            common::write_raw(&raw, &vec![0u8; 16 << 20]);
            common::make_evhd(&raw, &img);
            (img, vec!["--key".into(), s(&test_key().1).into()])
        }
        _ => {
            vhdkit_ok(["create", s(&img), "16M"]);
            (img, Vec::new())
        }
    }
}

fn with<'a>(args: &[&'a str], extra: &'a [String]) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend(extra.iter().map(String::as_str));
    v
}

/// Read `len` bytes at `offset` of the virtual disk through the CLI.
fn read_back(img: &Path, offset: u64, len: usize, extra: &[String]) -> Vec<u8> {
    let off = offset.to_string();
    let l = len.to_string();
    vhdkit_ok(with(
        &["read", s(img), "--offset", &off, "--length", &l],
        extra,
    ))
}

/// Acceptance 1: a second writer, and readers, are refused while one
/// process writes; the first writer's data is intact and the image clean.
fn second_writer_is_refused(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (img, extra) = make_image(dir.path(), kind);
    let before_b = read_back(&img, B_OFFSET, 4096, &extra);
    let a = Holder::start(&img, &with(&[], &extra));
    let pid = Some(a.pid());
    let b_off = B_OFFSET.to_string();
    let write_b = with(
        &[
            "write",
            s(&img),
            "--offset",
            &b_off,
            "--pattern",
            "0xab",
            "--length",
            "4096",
        ],
        &extra,
    );
    assert_in_use(&write_b, &img, pid);
    assert_in_use(
        &with(
            &["read", s(&img), "--offset", "0", "--length", "512"],
            &extra,
        ),
        &img,
        pid,
    );
    assert_in_use(&with(&["info", s(&img)], &extra), &img, pid);
    assert_in_use(&with(&["check", s(&img)], &extra), &img, pid);
    assert_in_use(&with(&["map", s(&img)], &extra), &img, pid);
    let copy = dir.path().join("copy.raw");
    assert_in_use(&with(&["convert", s(&img), s(&copy)], &extra), &img, pid);
    assert!(!copy.exists());
    if kind == "evhd" {
        assert_in_use(&["recipients", "list", s(&img)], &img, pid);
        let k = s(&test_key().1);
        assert_in_use(&["rekey", "-q", s(&img), "--key", k], &img, pid);
    }

    let data = random_bytes(A_LEN, 11);
    a.finish(&data);
    assert_eq!(
        read_back(&img, A_OFFSET, A_LEN, &extra),
        data,
        "{kind}: the first writer's data is not intact"
    );
    assert_eq!(
        read_back(&img, B_OFFSET, 4096, &extra),
        before_b,
        "{kind}: the refused writer changed the image"
    );
    let out = vhdkit(with(&["check", s(&img)], &extra));
    let (code, text, err) = code_out_err(&out);
    assert_eq!(code, 0, "{kind}: check after the writes: {text}{err}");
    // Once free, the second writer gets in; check --repair (which opens the
    // file more than once in turn) does not lock itself out.
    vhdkit_ok(&write_b);
    vhdkit_ok(with(&["check", "--repair", s(&img)], &extra));
}

#[test]
fn second_writer_is_refused_vhd() {
    second_writer_is_refused("vhd");
}

#[test]
fn second_writer_is_refused_vhdx() {
    second_writer_is_refused("vhdx");
}

#[test]
fn second_writer_is_refused_evhd() {
    second_writer_is_refused("evhd");
}

/// Acceptance 1: `-U` inspects an image in use, with a warning; `-U` with
/// a writing command is an error.
fn force_share_inspects(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (img, extra) = make_image(dir.path(), kind);
    let a = Holder::start(&img, &with(&[], &extra));
    let warned = |out: &Output, what: &str| {
        let (code, _, err) = code_out_err(out);
        assert_eq!(code, 0, "{kind} {what} -U: {err}");
        assert!(
            err.contains("warning") && err.contains("force-share") && err.contains(s(&img)),
            "{kind} {what} -U: no warning naming the image: {err}"
        );
    };
    let info = vhdkit(with(&["info", "-U", "--json", s(&img)], &extra));
    warned(&info, "info");
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["virtual_size"], 16 << 20, "{kind}: {v}");
    let read = vhdkit(with(
        &[
            "read",
            "--force-share",
            s(&img),
            "--offset",
            "0",
            "--length",
            "4096",
        ],
        &extra,
    ));
    warned(&read, "read");
    assert_eq!(read.stdout, vec![0u8; 4096]);
    warned(&vhdkit(with(&["map", "-U", s(&img)], &extra)), "map");
    warned(&vhdkit(with(&["check", "-U", s(&img)], &extra)), "check");
    let copy = dir.path().join("copy.raw");
    warned(
        &vhdkit(with(&["convert", "-q", "-U", s(&img), s(&copy)], &extra)),
        "convert",
    );
    warned(
        &vhdkit(with(&["compare", "-U", s(&img), s(&copy)], &extra)),
        "compare",
    );
    if kind == "evhd" {
        warned(
            &vhdkit(["recipients", "list", "-U", s(&img)]),
            "recipients list",
        );
    }
    // Writing commands refuse -U, and do not get in either.
    for args in [
        with(
            &[
                "write",
                "-U",
                s(&img),
                "--offset",
                "0",
                "--pattern",
                "1",
                "--length",
                "512",
            ],
            &extra,
        ),
        with(&["check", "--repair", "-U", s(&img)], &extra),
    ] {
        let (code, _, err) = code_out_err(&vhdkit(&args));
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("force-share"), "{args:?}: {err}");
    }
    a.finish(&random_bytes(A_LEN, 12));
}

#[test]
fn force_share_inspects_an_image_in_use_vhdx() {
    force_share_inspects("vhdx");
}

#[test]
fn force_share_inspects_an_image_in_use_evhd() {
    force_share_inspects("evhd");
}

/// Acceptance 1: `kill -9` of the holder releases its lock.
#[test]
fn killed_holder_releases_the_lock() {
    for kind in ["vhdx", "evhd"] {
        let dir = tempfile::tempdir().unwrap();
        let (img, extra) = make_image(dir.path(), kind);
        let a = Holder::start(&img, &with(&[], &extra));
        let write = with(
            &[
                "write",
                s(&img),
                "--offset",
                "4096",
                "--pattern",
                "0x5a",
                "--length",
                "4096",
            ],
            &extra,
        );
        assert_in_use(&write, &img, Some(a.pid()));
        a.kill9();
        vhdkit_ok(&write);
        assert_eq!(read_back(&img, 4096, 4096, &extra), vec![0x5a; 4096]);
        vhdkit_ok(with(&["check", s(&img)], &extra));
    }
}

/// A reader (`convert IMAGE -` into a pipe this test reads only once) that
/// holds the image open read-only: returns once it has produced output.
struct Reader {
    child: Child,
    out: Option<std::process::ChildStdout>,
    first: Vec<u8>,
}

impl Reader {
    fn start(img: &Path) -> Reader {
        let (child, first, out) = convert_reader(img);
        Reader {
            child,
            out: Some(out),
            first,
        }
    }

    /// Drain the output; the reader exits 0. Returns everything it wrote.
    fn finish(mut self) -> Vec<u8> {
        let rest = drain(self.out.take().unwrap())
            .recv_timeout(WAIT_LIMIT)
            .expect("reader hung");
        let st = wait_bounded(&mut self.child, "reader");
        assert!(st.success(), "reader failed: {st}");
        let mut all = std::mem::take(&mut self.first);
        all.extend(rest);
        all
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        kill_if_running(&mut self.child);
    }
}

/// Acceptance 1: readers share: two at once both read, a third too, and a
/// writer is refused while they read. A child's parent is read by two
/// readers of the child at once; writing a child takes only a shared lock
/// on its parent.
#[test]
fn readers_share_and_parents_are_shared() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("parent.vhdx");
    let child = dir.path().join("child.vhdx");
    vhdkit_ok(["create", s(&parent), "16M"]);
    vhdkit_ok([
        "write",
        s(&parent),
        "--offset",
        "0",
        "--pattern",
        "0x11",
        "--length",
        "1M",
    ]);
    vhdkit_ok(["create", "--parent", s(&parent), s(&child)]);
    let expected = {
        let mut v = vec![0x11u8; 1 << 20];
        v.resize(16 << 20, 0);
        v
    };

    // Two readers of the parent at once.
    let r1 = Reader::start(&parent);
    let r2 = Reader::start(&parent);
    assert!(is_locked(&parent, true) && !is_locked(&parent, false));
    vhdkit_ok(["read", s(&parent), "--offset", "0", "--length", "512"]);
    vhdkit_ok(["info", s(&parent)]);
    assert_in_use(
        &[
            "write",
            s(&parent),
            "--offset",
            "0",
            "--pattern",
            "0",
            "--length",
            "512",
        ],
        &parent,
        Some(r1.child.id()),
    );
    // A writer of the child shares the parent with the readers.
    vhdkit_ok([
        "write",
        s(&child),
        "--offset",
        "2M",
        "--pattern",
        "0x22",
        "--length",
        "4096",
    ]);
    assert_eq!(r1.finish(), expected);
    assert_eq!(r2.finish(), expected);

    // Two readers of the child at once: both hold the parent too.
    let mut expected_child = expected.clone();
    expected_child[2 << 20..(2 << 20) + 4096].fill(0x22);
    let c1 = Reader::start(&child);
    let c2 = Reader::start(&child);
    assert!(
        is_locked(&parent, true),
        "readers of the child lock its parent"
    );
    assert!(!is_locked(&parent, false));
    assert_in_use(
        &[
            "write",
            s(&parent),
            "--offset",
            "0",
            "--pattern",
            "0",
            "--length",
            "512",
        ],
        &parent,
        None,
    );
    assert_in_use(
        &[
            "write",
            s(&child),
            "--offset",
            "0",
            "--pattern",
            "0",
            "--length",
            "512",
        ],
        &child,
        Some(c1.child.id()),
    );
    assert_eq!(c1.finish(), expected_child);
    assert_eq!(c2.finish(), expected_child);
    assert!(!is_locked(&parent, true) && !is_locked(&child, true));
}

/// `convert --force` and `create --force` refuse to replace a destination
/// another process has open, and leave it as it was.
#[test]
fn force_does_not_replace_an_image_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = make_image(dir.path(), "vhdx");
    let src = dir.path().join("src.raw");
    common::write_raw(&src, &vec![7u8; 1 << 20]);
    let before = std::fs::read(&img).unwrap();
    let a = Holder::start(&img, &[]);
    assert_in_use(
        &["convert", "-q", "--force", s(&src), s(&img)],
        &img,
        Some(a.pid()),
    );
    assert_in_use(&["create", "--force", s(&img), "4M"], &img, Some(a.pid()));
    assert_eq!(std::fs::read(&img).unwrap(), before, "destination replaced");
    let data = random_bytes(A_LEN, 13);
    a.finish(&data);
    assert_eq!(read_back(&img, A_OFFSET, A_LEN, &[]), data);
    // Free again: --force replaces it.
    vhdkit_ok(["convert", "-q", "--force", s(&src), s(&img)]);
    assert_eq!(read_back(&img, 0, 4096, &[]), vec![7u8; 4096]);
}

/// The library: a second writable open of one file (even in one process)
/// is `InUse`; readers share; force-share reads beside a writer and cannot
/// write; closing releases the lock.
#[test]
fn library_open_locks() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lib.vhdx");
    vhdkit_ok(["create", s(&img), "8M"]);
    let rw = OpenOptions::new().writable(true);
    let ro = OpenOptions::new();

    let first = vhdkit::open(&img, &rw).unwrap();
    let e = common::open_err(&img, &rw);
    assert_eq!(e.kind(), ErrorKind::InUse, "{e}");
    assert_eq!(e.path(), Some(img.as_path()));
    assert!(e.to_string().contains("in use"), "{e}");
    if proc_locks_lists(std::process::id()) {
        assert!(e.to_string().contains("this process"), "{e}");
    }
    assert_eq!(common::open_err(&img, &ro).kind(), ErrorKind::InUse);
    let shared = vhdkit::open(&img, &ro.clone().force_share(true)).unwrap();
    assert_eq!(shared.virtual_size(), 8 << 20);
    let e = common::open_err(&img, &rw.clone().force_share(true));
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    drop(first);

    let r1 = vhdkit::open(&img, &ro).unwrap();
    let r2 = vhdkit::open(&img, &ro).unwrap();
    assert_eq!(common::open_err(&img, &rw).kind(), ErrorKind::InUse);
    drop((r1, r2));
    drop(shared);
    let mut w = vhdkit::open(&img, &rw).unwrap();
    w.write_at(&[1u8; 512], 0).unwrap();
    w.flush().unwrap();
    drop(w);
    let report = vhdkit::check(&img, &ro, true).unwrap();
    assert_eq!(report.exit_code(), 0);
}

/// `-U` reads with `pread`, never through a memory map: a reader of an
/// image another program shrinks meanwhile gets an I/O error naming the
/// image, not `SIGBUS` (with a map it died with exit 135).
#[test]
fn force_share_reader_survives_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("shrinking.raw");
    let len: usize = 64 << 20;
    let len_arg = len.to_string();
    let read: &[&str] = &["read", "-U", s(&img), "--offset", "0", "--length", &len_arg];
    // convert streams through its pipelined reader (which borrows mapped
    // bytes where it can).
    let stream: &[&str] = &["convert", "-q", "-U", s(&img), "-"];
    for args in [read, stream] {
        force_share_reader_survives_truncation_of(&img, len, args);
    }
}

fn force_share_reader_survives_truncation_of(img: &Path, len: usize, args: &[&str]) {
    common::write_raw(img, &vec![0x5au8; len]);
    let img = img.to_path_buf();
    let mut child = Command::new(vhdkit_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = drain(child.stderr.take().unwrap());
    let mut stdout = child.stdout.take().unwrap();
    // The reader has read its first chunk and is writing it into the pipe.
    let mut first = vec![0u8; 1 << 20];
    stdout.read_exact(&mut first).unwrap();
    assert!(first.iter().all(|&b| b == 0x5a));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(0)
        .unwrap();
    let rest = drain(stdout).recv_timeout(WAIT_LIMIT).unwrap();
    let st = wait_bounded(&mut child, "the -U reader");
    let err = String::from_utf8_lossy(&stderr.recv_timeout(WAIT_LIMIT).unwrap()).into_owned();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        None,
        "the reader died of a signal: {err}"
    );
    assert_eq!(st.code(), Some(1), "{args:?}: {err}");
    assert!(
        err.contains(s(&img)) && err.contains("raw image data"),
        "the error does not name the image and what failed: {err}"
    );
    assert!(first.len() + rest.len() < len, "read past the new end");
}

/// The in-use error suggests `-U` only where the command has it: creating
/// a child of a parent being written does not take `-U`.
#[test]
fn in_use_hint_only_where_force_share_exists() {
    let dir = tempfile::tempdir().unwrap();
    let (parent, _) = make_image(dir.path(), "vhdx");
    let child = dir.path().join("child.vhdx");
    let a = Holder::start(&parent, &[]);
    let out = vhdkit([
        "create",
        "-t",
        "differencing",
        "--parent",
        s(&parent),
        s(&child),
    ]);
    let (code, _, err) = code_out_err(&out);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(s(&parent)) && err.contains("in use"), "{err}");
    assert!(!err.contains("-U"), "create has no -U: {err}");
    assert!(!child.exists());
    for args in [
        vec!["read", s(&parent), "--offset", "0", "--length", "512"],
        vec!["info", s(&parent)],
        vec!["check", s(&parent)],
        vec!["map", s(&parent)],
        vec!["recipients", "list", s(&parent)],
    ] {
        let out = vhdkit(&args);
        let (code, _, err) = code_out_err(&out);
        assert_eq!(code, 1, "{args:?}: {err}");
        // (recipients list: an image in use is refused before anything
        // says that it is not an EVHD.)
        assert!(err.contains("in use"), "{args:?}: {err}");
        assert!(
            err.contains("(-U/--force-share reads it without a lock)"),
            "{args:?}: {err}"
        );
    }
    let data = random_bytes(A_LEN, 17);
    a.finish(&data);
}
