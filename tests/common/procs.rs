//! Child processes that hold an image open while a test looks on (the
//! locking tests): FIFOs that keep a writer waiting for its input, bounded
//! waits, and readers stalled on a pipe.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{code_out_err, s, vhdkit, vhdkit_bin};

/// Upper bound of every wait, only so that a broken build cannot hang the
/// test run; nothing is asserted about how long anything takes.
pub const WAIT_LIMIT: Duration = Duration::from_secs(120);

/// Make a FIFO at `path` and open it for reading and writing: opening a
/// FIFO so never waits for the other end, and a process reading it sees no
/// end of input until this handle is closed.
pub fn open_fifo(path: &Path) -> File {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(r, 0, "mkfifo {}", path.display());
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// Wait for `child` to exit; kill it and fail past [`WAIT_LIMIT`].
pub fn wait_bounded(child: &mut Child, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > WAIT_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish; killed it");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kill `child` and reap it if it is still running (for `Drop`).
pub fn kill_if_running(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Read all of `r` on a thread, handing the bytes over on a channel.
pub fn drain(mut r: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        let _ = tx.send(v);
    });
    rx
}

/// `vhdkit convert -q IMAGE -` into a pipe of which only the first 4 KiB
/// are read: once they are there, it has the image open, and a 16 MiB disk
/// does not fit the pipe, so it then waits, image open, until drained.
/// Returns the process, those first bytes and the rest of its output.
pub fn convert_reader(img: &Path) -> (Child, Vec<u8>, ChildStdout) {
    let mut child = Command::new(vhdkit_bin())
        .args(["convert", "-q", s(img), "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut first = vec![0u8; 4096];
        let ok = out.read_exact(&mut first).is_ok();
        let _ = tx.send((ok, first, out));
    });
    let Ok((ok, first, out)) = rx.recv_timeout(WAIT_LIMIT) else {
        kill_if_running(&mut child);
        panic!("the reader of {} produced no output", img.display());
    };
    if !ok {
        kill_if_running(&mut child);
        panic!("the reader of {} failed", img.display());
    }
    (child, first, out)
}

/// `vhdkit ARGS` must fail with exit 1 and an in-use error naming `image`;
/// returns stderr (for the caller to look for the holder it expects).
pub fn assert_in_use(args: &[&str], image: &Path) -> String {
    let (code, _, err) = code_out_err(&vhdkit(args));
    assert_eq!(code, 1, "vhdkit {args:?}: expected exit 1, stderr: {err}");
    assert!(
        err.contains(s(image)) && err.contains("in use"),
        "vhdkit {args:?}: expected an in-use error naming {}, got: {err}",
        image.display()
    );
    err
}
