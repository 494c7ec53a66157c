//! vhdkit and qemu see each other's image locks (issue 11, Linux): qemu
//! (`qemu-io`, `qemu-img`) records its use of an image as `fcntl` OFD locks
//! on bytes 100+ and 200+ of the file, which `flock` does not see, so vhdkit
//! takes and tests the same bytes beside its flock.
//!
//! - a qemu writer keeps vhdkit's readers and writers out (`-U` still reads);
//! - a vhdkit writer keeps `qemu-img info` and a `qemu-io` writer out
//!   (`qemu-img info -U` still reads);
//! - readers of both share the image, and a reader of either keeps a writer
//!   of the other out.
//!
//! The holders are real processes: `qemu-io -c 'sleep MS'` keeps the image
//! open until killed, and `vhdkit write --input FIFO` (as in
//! tests/locking.rs) waits for input on a FIFO this test keeps open. Every
//! wait is bounded.
#![cfg(target_os = "linux")]

mod common;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::procs::{WAIT_LIMIT, assert_in_use, convert_reader, kill_if_running, open_fifo};
use common::{code_out_err, require_tool, s, vhdkit, vhdkit_bin, vhdkit_ok};

/// How long (in ms) a holding `qemu-io` sleeps: far longer than the test,
/// which kills it.
const QEMU_SLEEP_MS: &str = "600000";

/// qemu's lock byte of the "write" permission (100 + bit 1): held by every
/// qemu writer.
const QEMU_WRITE_BYTE: u64 = 101;
/// qemu's lock byte for not sharing "write" (200 + bit 1): held by every
/// qemu reader and writer of an image without -U.
const QEMU_UNSHARE_WRITE_BYTE: u64 = 201;

fn tools() -> bool {
    require_tool("qemu-img") && require_tool("qemu-io")
}

/// Whether some open file holds an OFD lock on byte `byte` of `path`, from
/// /proc/locks (OFD locks show there with pid -1).
fn ofd_byte_locked(path: &Path, byte: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = format!(":{}", std::fs::metadata(path).unwrap().ino());
    let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    text.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 8 || f[1] != "OFDLCK" || !f[5].ends_with(&ino) {
            return false;
        }
        let start = f[6].parse::<u64>().unwrap_or(u64::MAX);
        let end = if f[7] == "EOF" {
            u64::MAX
        } else {
            f[7].parse::<u64>().unwrap_or(0)
        };
        start <= byte && byte <= end
    })
}

/// Wait until `byte` of `path` is OFD-locked, failing if `child` exits first.
fn wait_for_byte(path: &Path, byte: u64, child: &mut Child, what: &str) {
    let start = Instant::now();
    while !ofd_byte_locked(path, byte) {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("{what} exited ({st}) before locking byte {byte}: {err}");
        }
        assert!(
            start.elapsed() < WAIT_LIMIT,
            "{what} never locked byte {byte} of {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process (qemu or vhdkit) holding an image open; killed on drop.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Kill it and wait until it is gone (its locks with it).
    fn stop(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        kill_if_running(&mut self.0);
    }
}

/// `qemu-io [-r] -f FORMAT IMAGE -c 'sleep ...'`: qemu holding the image
/// open for writing (or for reading with `read_only`) until killed.
fn qemu_io_holding(img: &Path, format: &str, read_only: bool) -> Proc {
    let mut cmd = Command::new("qemu-io");
    if read_only {
        cmd.arg("-r");
    }
    let child = cmd
        .args(["-f", format, s(img), "-c"])
        .arg(format!("sleep {QEMU_SLEEP_MS}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start qemu-io");
    let byte = if read_only {
        QEMU_UNSHARE_WRITE_BYTE
    } else {
        QEMU_WRITE_BYTE
    };
    // Held in a Proc first, so that it is killed if the wait fails.
    let mut p = Proc(child);
    wait_for_byte(img, byte, &mut p.0, "qemu-io");
    p
}

/// `vhdkit write IMAGE --input FIFO`: vhdkit holding the image open for
/// writing while it waits for input; the FIFO handle kept here (read and
/// write, so opening it never waits) holds its input open.
fn vhdkit_writer_holding(img: &Path) -> (Proc, File) {
    let fifo_path = img.with_extension("fifo");
    let fifo = open_fifo(&fifo_path);
    let child = Command::new(vhdkit_bin())
        .args(["write", s(img), "--offset", "0", "--input", s(&fifo_path)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut p = Proc(child);
    wait_for_byte(img, QEMU_WRITE_BYTE, &mut p.0, "vhdkit write");
    (p, fifo)
}

/// `vhdkit convert -q IMAGE -` into a pipe this test reads only 4 KiB of:
/// vhdkit holding a 16 MiB image open for reading until killed.
fn vhdkit_reader_holding(img: &Path) -> (Proc, std::process::ChildStdout) {
    let (child, _, out) = convert_reader(img);
    assert!(ofd_byte_locked(img, QEMU_UNSHARE_WRITE_BYTE));
    (Proc(child), out)
}

/// `vhdkit ARGS` fails with exit 1 and an in-use error naming the image and
/// the qemu process holding it (its pid is found in /proc/PID/fdinfo, which
/// this user can read for its own child).
fn assert_vhdkit_in_use(args: &[&str], img: &Path, qemu_pid: u32) {
    let err = assert_in_use(args, img);
    assert!(
        err.contains(&format!("process {qemu_pid} (qemu-io)")),
        "vhdkit {args:?}: the error does not name qemu-io {qemu_pid}: {err}"
    );
}

fn qemu(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

/// A qemu command must fail with qemu's lock error.
fn assert_qemu_locked_out(cmd: &str, args: &[&str]) {
    let out = qemu(cmd, args);
    let (code, text, err) = code_out_err(&out);
    assert_ne!(
        code, 0,
        "{cmd} {args:?} ran beside vhdkit's lock: {text}{err}"
    );
    assert!(
        err.contains("lock") && err.contains("Is another process using the image"),
        "{cmd} {args:?}: expected qemu's lock error: {err}"
    );
}

/// A qemu command must succeed.
fn assert_qemu_ok(cmd: &str, args: &[&str]) -> String {
    let out = qemu(cmd, args);
    let (code, text, err) = code_out_err(&out);
    assert_eq!(code, 0, "{cmd} {args:?}: {text}{err}");
    text
}

/// A 16 MiB image of `format` ("vhdx" made by vhdkit, "raw" a plain file).
fn make_image(dir: &Path, format: &str) -> PathBuf {
    let img = dir.join(format!("disk.{format}"));
    match format {
        "raw" => common::write_raw(&img, &vec![0u8; 16 << 20]),
        _ => {
            vhdkit_ok(["create", s(&img), "16M"]);
        }
    }
    img
}

/// (1) While qemu-io has the image open for writing, vhdkit can neither
/// write nor read it (the error names qemu-io's pid); `info -U` reads it;
/// once qemu-io is gone vhdkit writes.
fn qemu_writer_keeps_vhdkit_out(format: &str) {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path(), format);
    let q = qemu_io_holding(&img, format, false);
    let write = [
        "write",
        s(&img),
        "--offset",
        "0",
        "--pattern",
        "0x5a",
        "--length",
        "4096",
    ];
    assert_vhdkit_in_use(&write, &img, q.pid());
    assert_vhdkit_in_use(
        &["read", s(&img), "--offset", "0", "--length", "512"],
        &img,
        q.pid(),
    );
    assert_vhdkit_in_use(&["info", s(&img)], &img, q.pid());
    // Nor is the image replaced under qemu by convert --force.
    let src = dir.path().join("src.raw");
    common::write_raw(&src, &vec![7u8; 1 << 20]);
    let before = std::fs::read(&img).unwrap();
    assert_vhdkit_in_use(
        &["convert", "-q", "--force", s(&src), s(&img)],
        &img,
        q.pid(),
    );
    assert_eq!(std::fs::read(&img).unwrap(), before, "{format}: replaced");
    let out = vhdkit(["info", "-U", "--json", s(&img)]);
    let (code, _, err) = code_out_err(&out);
    assert_eq!(code, 0, "{format}: info -U beside qemu-io: {err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["virtual_size"], 16 << 20, "{v}");
    q.stop();
    vhdkit_ok(write);
    assert_eq!(
        vhdkit_ok(["read", s(&img), "--offset", "0", "--length", "4096"]),
        vec![0x5a; 4096]
    );
}

#[test]
fn qemu_writer_keeps_vhdkit_out_vhdx() {
    qemu_writer_keeps_vhdkit_out("vhdx");
}

#[test]
fn qemu_writer_keeps_vhdkit_out_raw() {
    qemu_writer_keeps_vhdkit_out("raw");
}

/// (2) While vhdkit writes the image, `qemu-img info` and a `qemu-io`
/// writer fail with qemu's lock error; `qemu-img info -U` reads it; once
/// vhdkit has finished, `qemu-img info` works again.
#[test]
fn vhdkit_writer_keeps_qemu_out() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path(), "vhdx");
    let (w, fifo) = vhdkit_writer_holding(&img);
    assert_qemu_locked_out("qemu-img", &["info", s(&img)]);
    assert_qemu_locked_out("qemu-io", &["-f", "vhdx", "-c", "read 0 512", s(&img)]);
    let text = assert_qemu_ok("qemu-img", &["info", "-U", s(&img)]);
    assert!(text.contains("file format: vhdx"), "{text}");
    // End the writer's input: it writes nothing and exits, unlocking.
    drop(fifo);
    let mut child = w;
    let start = Instant::now();
    while child.0.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < WAIT_LIMIT, "the vhdkit writer hung");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        child.0.wait().unwrap().success(),
        "the vhdkit writer failed"
    );
    assert!(!ofd_byte_locked(&img, QEMU_WRITE_BYTE));
    assert_qemu_ok("qemu-img", &["info", s(&img)]);
    assert_qemu_ok("qemu-io", &["-f", "vhdx", "-c", "write 0 512", s(&img)]);
}

/// (3) Readers of both share: beside a vhdkit reader `qemu-img info` works
/// and a qemu-io writer is refused; beside a qemu reader vhdkit reads, and a
/// vhdkit writer is refused naming qemu-io.
#[test]
fn vhdkit_and_qemu_readers_coexist() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path(), "vhdx");

    let (r, _out) = vhdkit_reader_holding(&img);
    let text = assert_qemu_ok("qemu-img", &["info", s(&img)]);
    assert!(text.contains("file format: vhdx"), "{text}");
    assert_qemu_locked_out("qemu-io", &["-f", "vhdx", "-c", "write 0 512", s(&img)]);
    r.stop();

    let q = qemu_io_holding(&img, "vhdx", true);
    assert_eq!(
        vhdkit_ok(["read", s(&img), "--offset", "0", "--length", "512"]),
        vec![0u8; 512]
    );
    vhdkit_ok(["info", s(&img)]);
    vhdkit_ok(["check", s(&img)]);
    assert_vhdkit_in_use(
        &[
            "write",
            s(&img),
            "--offset",
            "0",
            "--pattern",
            "1",
            "--length",
            "512",
        ],
        &img,
        q.pid(),
    );
    q.stop();
}
