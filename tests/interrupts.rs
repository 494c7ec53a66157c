//! An interrupted `convert` leaves no temporary file: SIGINT, SIGTERM and
//! SIGHUP remove it before the process exits with 128 + the signal's number;
//! after SIGKILL (which nothing can catch) the next `convert` to the same
//! destination removes the stale file and says so.
#![cfg(unix)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Size of the raw source: large enough that converting it takes a good
/// part of a second or more, so the temporary file can be seen and the
/// process signalled while it writes.
const SOURCE_SIZE: usize = 512 << 20;

/// Longest wait for the temporary file to appear or a process to end.
const WAIT: Duration = Duration::from_secs(60);

/// A raw source whose every sector holds data (no zero ranges to skip),
/// written with a few large writes.
fn big_source(dir: &Path) -> PathBuf {
    let p = dir.join("src.raw");
    let block: Vec<u8> = (0..8usize << 20).map(|i| (i % 251) as u8 + 1).collect();
    let mut f = std::fs::File::create(&p).unwrap();
    for _ in 0..SOURCE_SIZE / block.len() {
        f.write_all(&block).unwrap();
    }
    p
}

fn start_convert(src: &Path, dst: &Path) -> Child {
    Command::new(vhdkit_bin())
        .args(["convert", "-q", s(src), s(dst)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The temporary file of process `pid` for `dst`, once it exists (bounded
/// wait; fails if the process ends first).
fn wait_for_temp(child: &mut Child, dst: &Path) -> PathBuf {
    let name = dst.file_name().unwrap().to_str().unwrap();
    let tmp = dst.with_file_name(format!(".{name}.vhdkit-{}.tmp", child.id()));
    let start = Instant::now();
    loop {
        if tmp.exists() {
            return tmp;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("convert ended ({status}) before its temporary file was seen");
        }
        assert!(start.elapsed() < WAIT, "no temporary file {tmp:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Wait (bounded) for `child` to end; its exit status and stderr.
fn wait_end(mut child: Child) -> (std::process::ExitStatus, String) {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (
                out.status,
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if start.elapsed() > WAIT {
            let _ = child.kill();
            panic!("convert did not end after the signal");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(child: &Child, sig: i32) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

/// SIGINT, SIGTERM and SIGHUP: the temporary file is removed, no DST is
/// created, and the exit status is 128 + the signal (130, 143, 129).
#[test]
fn catchable_signals_remove_the_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = big_source(dir.path());
    for (sig, code) in [
        (libc::SIGINT, 130),
        (libc::SIGTERM, 143),
        (libc::SIGHUP, 129),
    ] {
        let dst = dir.path().join(format!("out-{sig}.vhdx"));
        let mut child = start_convert(&src, &dst);
        let tmp = wait_for_temp(&mut child, &dst);
        signal(&child, sig);
        let (status, stderr) = wait_end(child);
        assert_eq!(
            status.code(),
            Some(code),
            "signal {sig}: {status}; {stderr}"
        );
        assert!(!tmp.exists(), "signal {sig}: {tmp:?} was left");
        assert!(!dst.exists(), "signal {sig}: {dst:?} was created");
        assert_eq!(temp_debris(dir.path()), Vec::<String>::new());
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// SIGKILL leaves the temporary file; the next convert to the same DST
/// removes it, says so on stderr, and succeeds.
#[test]
fn stale_file_after_sigkill_is_removed_by_the_next_convert() {
    let dir = tempfile::tempdir().unwrap();
    let src = big_source(dir.path());
    let dst = dir.path().join("out.vhdx");
    let mut child = start_convert(&src, &dst);
    let pid = child.id();
    let tmp = wait_for_temp(&mut child, &dst);
    signal(&child, libc::SIGKILL);
    let (status, _) = wait_end(child);
    assert_eq!(status.code(), None, "{status}");
    assert!(
        tmp.exists(),
        "SIGKILL cannot clean up: {tmp:?} should remain"
    );
    assert!(!dst.exists());
    // A temporary file of a running process (this test's) is left alone.
    let live = dst.with_file_name(format!(".out.vhdx.vhdkit-{}.tmp", std::process::id()));
    std::fs::write(&live, b"in use").unwrap();

    let out = vhdkit(["convert", "-q", s(&src), s(&dst)]);
    let (code, _, stderr) = code_out_err(&out);
    assert_eq!(code, 0, "{stderr}");
    let tmp_name = tmp.file_name().unwrap().to_str().unwrap();
    assert!(
        stderr.contains(&format!(
            "removed a stale temporary file {tmp_name} left by process {pid}, which no longer runs"
        )),
        "{stderr}"
    );
    assert!(!tmp.exists(), "{tmp:?} was not removed");
    assert!(
        live.exists(),
        "a running process's temporary file was removed"
    );
    std::fs::remove_file(&live).unwrap();
    assert_eq!(temp_debris(dir.path()), Vec::<String>::new());
    // The converted image holds the source.
    let disk = open(&dst);
    assert_eq!(disk.virtual_size(), SOURCE_SIZE as u64);
    let tail = SOURCE_SIZE - (1 << 20);
    let mut buf = vec![0u8; 1 << 20];
    disk.read_at(&mut buf, tail as u64).unwrap();
    let want: Vec<u8> = (tail..SOURCE_SIZE)
        .map(|i| ((i % (8 << 20)) % 251) as u8 + 1)
        .collect();
    assert!(buf == want, "DST's last MiB differs from the source");
}

/// `create` and key file writes reclaim stale temporary files for their
/// target too (and name them), leaving a running process's file alone.
#[test]
fn create_and_keygen_reclaim_stale_files() {
    let dir = tempfile::tempdir().unwrap();
    // A process that has ended and been reaped: its pid no longer runs.
    let mut child = Command::new("true").spawn().unwrap();
    let gone = child.id();
    child.wait().unwrap();
    let img = dir.path().join("new.vhd");
    let key = dir.path().join("k.xml");
    let stale_img = dir.path().join(format!(".new.vhd.vhdkit-{gone}.tmp"));
    let stale_key = dir
        .path()
        .join(format!(".k.xml.vhdkit-{gone}-0123456789abcdef.tmp"));
    let live = dir
        .path()
        .join(format!(".new.vhd.vhdkit-{}.tmp", std::process::id()));
    for p in [&stale_img, &stale_key, &live] {
        std::fs::write(p, b"left over").unwrap();
    }
    let (code, _, stderr) = code_out_err(&vhdkit(["create", s(&img), "4M"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "removed a stale temporary file .new.vhd.vhdkit-{gone}.tmp left by process {gone}"
        )),
        "{stderr}"
    );
    assert!(!stale_img.exists() && live.exists() && stale_key.exists());
    let (code, _, stderr) = code_out_err(&vhdkit(["keygen", "-o", s(&key)]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "removed a stale temporary file .k.xml.vhdkit-{gone}-0123456789abcdef.tmp"
        )),
        "{stderr}"
    );
    assert!(!stale_key.exists() && key.exists());
}

/// A temporary file whose process id is gone here but which another
/// process still holds locked (a writer on another host over NFS, or in
/// another PID namespace) is not removed by a later convert; once the lock
/// is released it is.
#[test]
fn locked_temp_file_of_a_gone_pid_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("true").spawn().unwrap();
    let gone = child.id();
    child.wait().unwrap();
    let src = dir.path().join("src.raw");
    write_raw(&src, &random_bytes(1 << 20, 4));
    let dst = dir.path().join("out.vhd");
    let stale = dir.path().join(format!(".out.vhd.vhdkit-{gone}.tmp"));
    std::fs::write(&stale, b"being written elsewhere").unwrap();
    let holder = std::fs::File::open(&stale).unwrap();
    holder.try_lock().unwrap();
    let (code, _, stderr) = code_out_err(&vhdkit(["convert", s(&src), s(&dst)]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stale.exists(), "a locked temporary file was removed");
    assert!(!stderr.contains("stale"), "{stderr}");
    holder.unlock().unwrap();
    drop(holder);
    let (code, _, stderr) = code_out_err(&vhdkit(["convert", "--force", s(&src), s(&dst)]));
    assert_eq!(code, 0, "{stderr}");
    assert!(!stale.exists(), "{stderr}");
}

/// SIGINT in the middle of a change in place (here `compact`, which
/// moves blocks) says what state the image is in: crash safe, as before
/// or after, a re-run completes it. The image then reads as before, and
/// compacting again finishes cleanly.
#[test]
fn interrupted_compact_says_how_to_finish() {
    let dir = tempfile::tempdir().unwrap();
    let src = big_source(dir.path());
    let img = dir.path().join("img.vhdx");
    vhdkit_ok(["convert", "-q", s(&src), s(&img)]);
    std::fs::remove_file(&src).unwrap();
    // Zero the first half: compact drops those blocks and moves the rest.
    vhdkit_ok([
        "write",
        s(&img),
        "--offset",
        "0",
        "--pattern",
        "0",
        "--length",
        &(SOURCE_SIZE / 2).to_string(),
    ]);
    let want = sha256_hex(&read_image(&img));
    let mut interrupted = false;
    for delay_ms in [30, 60, 120, 250, 500] {
        let child = Command::new(vhdkit_bin())
            .args(["compact", s(&img)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let mut child = child;
        if child.try_wait().unwrap().is_none() {
            signal(&child, libc::SIGINT);
        }
        let (status, stderr) = wait_end(child);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(sha256_hex(&read_image(&img)), want, "after {delay_ms} ms");
        if status.code() == Some(130) {
            assert!(
                stderr.contains("interrupted while compacting")
                    && stderr.contains("crash safe")
                    && stderr.contains("running the same command again completes it"),
                "{stderr}"
            );
            interrupted = true;
            break;
        }
        assert_eq!(status.code(), Some(0), "{stderr}");
    }
    if !interrupted {
        skip("compact always ended before the signal: no interruption was seen");
        return;
    }
    assert!(vhdkit_run(&["check", s(&img)]).0 != 2, "not damaged");
    vhdkit_ok(["compact", s(&img)]);
    assert_eq!(vhdkit_run(&["check", s(&img)]).0, 0);
    assert_eq!(sha256_hex(&read_image(&img)), want);
    assert_eq!(temp_debris(dir.path()), Vec::<String>::new());
}
