//! Destinations that are not regular files (issue 12, point 2).
//!
//! `--force` replaces only regular files: a FIFO, a symbolic link (to a
//! regular file or dangling), a character device, a block device or a
//! directory is refused with exit 1 and left exactly as it was.
//! `convert --device` writes the raw content in place onto an existing
//! regular file or block device, size checked, never creating anything.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// What identifies a file system object: device, inode, type, mode,
/// device number, and a link's target (compared before and after).
#[derive(Debug, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    mode: u32,
    rdev: u64,
    link: Option<PathBuf>,
    size: u64,
}

fn identity(p: &Path) -> Identity {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    Identity {
        dev: m.dev(),
        ino: m.ino(),
        mode: m.mode(),
        rdev: m.rdev(),
        link: fs::read_link(p).ok(),
        size: if m.file_type().is_symlink() || m.is_file() {
            m.len()
        } else {
            0
        },
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn mkfifo(p: &Path) {
    run(Command::new("mkfifo").arg(p));
}

/// A character device to use as DST: a `/dev/null` node made with mknod
/// in `dir` when running as root; otherwise `/dev/null` itself (a rename
/// over it would fail for lack of permission anyway, so only root makes
/// that case meaningful; the test says so).
fn char_device(dir: &Path) -> PathBuf {
    if is_root() {
        let p = dir.join("null-node");
        run(Command::new("mknod").arg(&p).args(["c", "1", "3"]));
        p
    } else {
        skip("partly: not root, so the character-device DST is /dev/null itself");
        PathBuf::from("/dev/null")
    }
}

/// A small VHDX with data and zero blocks (1 MiB blocks), and its content.
fn source(dir: &Path) -> (PathBuf, Vec<u8>) {
    let data = mixed_content(9 << 20, 12);
    let raw = dir.join("src.raw");
    write_raw(&raw, &data);
    let vhdx = dir.join("src.vhdx");
    vhdkit_ok_output(&["convert", "--block-size", "1M", s(&raw), s(&vhdx)]);
    let map = String::from_utf8(vhdkit_ok_stdout(&["map", "--json", s(&vhdx)])).unwrap();
    assert!(
        map.contains("\"zero\"") && map.contains("\"data\""),
        "the source must hold both data and zero blocks: {map}"
    );
    (vhdx, data)
}

/// Every way of replacing DST with `--force` (`convert`, `create`,
/// `keygen -o`) refuses `dst` with exit 1 and a message naming it and
/// `what` it is, and leaves it (and any file it links to) as it was,
/// without temporary files.
fn assert_force_refused(dir: &Path, src: &Path, dst: &Path, what: &str) {
    let before = identity(dst);
    let target_before = fs::read(dir.join("target.raw")).unwrap();
    let runs: Vec<Vec<&str>> = vec![
        vec!["convert", "--force", "-O", "raw", s(src), s(dst)],
        vec!["convert", "-O", "raw", s(src), s(dst)],
        vec!["convert", "--force", "-O", "vhdx", s(src), s(dst)],
        vec!["create", "--force", "-f", "raw", s(dst), "1M"],
        vec!["create", "--force", "-f", "vhdx", s(dst), "1M"],
        vec!["keygen", "--bits", "2048", "--force", "-o", s(dst)],
    ];
    for args in runs {
        let (code, _, err) = vhdkit_run(&args);
        assert_eq!(code, 1, "{args:?} must be refused: {err}");
        assert!(
            err.contains(s(dst)) && err.contains(what),
            "{args:?}: the error must name {} and say it is {what}: {err}",
            dst.display()
        );
        assert_eq!(identity(dst), before, "{args:?} changed {}", dst.display());
        assert_eq!(
            fs::read(dir.join("target.raw")).unwrap(),
            target_before,
            "{args:?} changed the link's target"
        );
        assert!(temp_debris(dir).is_empty(), "{:?}", temp_debris(dir));
    }
}

#[test]
fn force_refuses_fifo_symlinks_and_char_device() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let src = dir.join("src.raw");
    write_raw(&src, &random_bytes(1 << 20, 1));
    write_raw(&dir.join("target.raw"), b"precious");

    let fifo = dir.join("pipe");
    mkfifo(&fifo);
    assert_force_refused(dir, &src, &fifo, "is a FIFO");
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());

    let link = dir.join("link.raw");
    symlink(dir.join("target.raw"), &link).unwrap();
    assert_force_refused(dir, &src, &link, "symbolic link");
    assert_eq!(fs::read(&link).unwrap(), b"precious");

    let dangling = dir.join("dangling.raw");
    symlink(dir.join("nowhere.raw"), &dangling).unwrap();
    assert_force_refused(dir, &src, &dangling, "symbolic link");
    assert!(!dir.join("nowhere.raw").exists());

    let chr = char_device(dir);
    assert_force_refused(dir, &src, &chr, "is a character device");
    assert!(fs::metadata(&chr).unwrap().file_type().is_char_device());

    let sub = dir.join("sub");
    fs::create_dir(&sub).unwrap();
    assert_force_refused(dir, &src, &sub, "is a directory");
}

/// The refusal suggests `--device` for a block device and leaves it alone.
#[test]
fn force_refuses_block_device_and_suggests_device() {
    if !is_root() {
        skip("not root, cannot make a block device node");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src.raw");
    write_raw(&src, &random_bytes(1 << 20, 1));
    // A node for a loop device number; nothing is opened through it.
    let blk = d.path().join("blk");
    run(Command::new("mknod").arg(&blk).args(["b", "7", "200"]));
    let before = identity(&blk);
    let err = vhdkit_fails(
        Some(1),
        &["convert", "--force", "-O", "raw", s(&src), s(&blk)],
    );
    assert!(
        err.contains("is a block device") && err.contains("--device"),
        "{err}"
    );
    assert_eq!(identity(&blk), before);
}

/// `--force` still replaces a regular file (the refusal is not blanket).
#[test]
fn force_replaces_a_regular_file() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src.raw");
    let data = random_bytes(1 << 20, 3);
    write_raw(&src, &data);
    let dst = d.path().join("dst.raw");
    write_raw(&dst, b"old");
    vhdkit_ok_output(&["convert", "--force", s(&src), s(&dst)]);
    assert_eq!(fs::read(&dst).unwrap(), data);
}

/// A symbolic link that appears at DST while the image is being built is
/// found by the check right before the rename: refused, left as it is, and
/// the temporary file removed.
#[test]
fn link_appearing_during_the_build_is_not_replaced() {
    let d = tempfile::tempdir().unwrap();
    let dst = d.path().join("out.vhdx");
    let target = d.path().join("target");
    fs::write(&target, b"keep").unwrap();
    let spec = vhdkit::convert::ImageSpec::new(vhdkit::Format::Vhdx);
    let out = vhdkit::convert::OutputOptions {
        overwrite: true,
        sync: false,
    };
    let e = vhdkit::convert::create_file(&dst, &spec, 1 << 20, out, |_| {
        symlink(&target, &dst).unwrap();
        Ok(())
    })
    .unwrap_err();
    assert!(e.to_string().contains("is a symbolic link"), "{e}");
    assert_eq!(fs::read_link(&dst).unwrap(), target);
    assert_eq!(fs::read(&target).unwrap(), b"keep");
    assert!(
        temp_debris(d.path()).is_empty(),
        "{:?}",
        temp_debris(d.path())
    );
}

/// `--device` onto a larger regular file: the image's bytes (data and
/// zeros over old non-zero content) exactly, the tail kept, the file
/// neither replaced nor resized.
#[test]
fn device_onto_regular_file() {
    let d = tempfile::tempdir().unwrap();
    let (vhdx, data) = source(d.path());
    let tail = random_bytes(3 << 20, 7);
    let mut old = random_bytes(data.len(), 8);
    old.extend_from_slice(&tail);
    let target = d.path().join("target.img");
    write_raw(&target, &old);
    let before = identity(&target);
    let (code, out, err) = vhdkit_run(&["convert", "--device", s(&vhdx), s(&target)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty() && err.is_empty(), "{err}");
    assert_eq!(
        identity(&target),
        before,
        "the target must be written in place"
    );
    let got = fs::read(&target).unwrap();
    assert!(
        got[..data.len()] == data[..],
        "content differs from the source"
    );
    let read = vhdkit_ok_stdout(&[
        "read",
        s(&vhdx),
        "--offset",
        "0",
        "--length",
        &data.len().to_string(),
    ]);
    assert!(
        got[..data.len()] == read[..],
        "content differs from `vhdkit read`"
    );
    assert!(
        got[data.len()..] == tail[..],
        "the tail beyond the image changed"
    );
    // A symbolic link to the file is followed with --device.
    let link = d.path().join("link");
    symlink(&target, &link).unwrap();
    write_raw(&target, &old);
    vhdkit_ok_output(&["convert", "--device", s(&vhdx), s(&link)]);
    assert!(fs::read(&target).unwrap()[..data.len()] == data[..]);
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn device_onto_smaller_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (vhdx, data) = source(d.path());
    let target = d.path().join("small.img");
    let old = random_bytes(data.len() - 512, 9);
    write_raw(&target, &old);
    let err = vhdkit_fails(Some(1), &["convert", "--device", s(&vhdx), s(&target)]);
    assert!(
        err.contains(s(&target))
            && err.contains("less than")
            && err.contains(&format!("holds {:#x} bytes", old.len()))
            && err.contains(&format!("virtual size of {:#x} bytes", data.len()))
            && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(fs::read(&target).unwrap(), old);
}

/// `--device` never creates: a missing path or a dangling link is refused
/// and nothing appears.
#[test]
fn device_never_creates() {
    let d = tempfile::tempdir().unwrap();
    let (vhdx, _) = source(d.path());
    let missing = d.path().join("missing.img");
    let err = vhdkit_fails(Some(1), &["convert", "--device", s(&vhdx), s(&missing)]);
    assert!(
        err.contains(s(&missing)) && err.contains("does not exist"),
        "{err}"
    );
    assert!(fs::symlink_metadata(&missing).is_err());
    let dangling = d.path().join("dangling");
    symlink(d.path().join("nowhere"), &dangling).unwrap();
    let err = vhdkit_fails(Some(1), &["convert", "--device", s(&vhdx), s(&dangling)]);
    assert!(err.contains("points to nothing"), "{err}");
    assert!(fs::symlink_metadata(d.path().join("nowhere")).is_err());
    assert!(temp_debris(d.path()).is_empty());
}

/// Only raw output: `-O vhdx` (or a DST named like a VHDX without `-O
/// raw`) is refused and the target left alone; `-O raw` confirms.
#[test]
fn device_refuses_other_output_formats() {
    let d = tempfile::tempdir().unwrap();
    let (vhdx, data) = source(d.path());
    let target = d.path().join("target.img");
    let old = random_bytes(data.len(), 10);
    write_raw(&target, &old);
    for f in ["vhdx", "vhd", "evhd"] {
        let err = vhdkit_fails(
            Some(1),
            &["convert", "--device", "-O", f, s(&vhdx), s(&target)],
        );
        assert!(err.contains("raw content only"), "{err}");
        assert_eq!(fs::read(&target).unwrap(), old);
    }
    let named = d.path().join("disk.vhdx");
    write_raw(&named, &old);
    let err = vhdkit_fails(Some(1), &["convert", "--device", s(&vhdx), s(&named)]);
    assert!(err.contains("-O raw"), "{err}");
    assert_eq!(fs::read(&named).unwrap(), old);
    vhdkit_ok_output(&["convert", "--device", "-O", "raw", s(&vhdx), s(&named)]);
    assert!(fs::read(&named).unwrap() == data);
    // --device and --force ask for opposite things.
    vhdkit_fails(
        Some(1),
        &["convert", "--device", "--force", s(&vhdx), s(&target)],
    );
    assert_eq!(fs::read(&target).unwrap(), old);
}

/// A FIFO, a character device or a directory is no `--device` target:
/// refused at once (the FIFO open does not wait for a reader).
#[test]
fn device_refuses_special_files() {
    let d = tempfile::tempdir().unwrap();
    let (vhdx, _) = source(d.path());
    let fifo = d.path().join("pipe");
    mkfifo(&fifo);
    let chr = char_device(d.path());
    for (p, what) in [
        (&fifo, "is a FIFO"),
        (&chr, "is a character device"),
        (&d.path().to_path_buf(), "is a directory"),
    ] {
        let before = identity(p);
        let err = vhdkit_fails(Some(1), &["convert", "--device", s(&vhdx), s(p)]);
        assert!(err.contains(what) && err.contains(s(p)), "{err}");
        assert_eq!(identity(p), before);
    }
}

/// The target is locked like an image being written: a vhdkit process (or
/// anything holding its flock) using it keeps `--device` out.
#[test]
fn device_honours_the_image_lock() {
    let d = tempfile::tempdir().unwrap();
    let (vhdx, data) = source(d.path());
    let target = d.path().join("target.img");
    let old = random_bytes(data.len(), 11);
    write_raw(&target, &old);
    let holder = fs::File::open(&target).unwrap();
    holder.try_lock_shared().unwrap();
    let err = vhdkit_fails(Some(1), &["convert", "--device", s(&vhdx), s(&target)]);
    assert!(err.contains("in use"), "{err}");
    assert_eq!(fs::read(&target).unwrap(), old);
    // Unlock before closing: a child another test is starting may hold a
    // copy of the descriptor (and with it the lock) until it executes.
    holder.unlock().unwrap();
    drop(holder);
    vhdkit_ok_output(&["convert", "--device", s(&vhdx), s(&target)]);
    assert!(fs::read(&target).unwrap() == data);
}

/// A loop device detached when dropped.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// Attach `file` to a free loop device, or say why not.
fn attach_loop(file: &Path) -> Result<Loop, String> {
    if !is_root() {
        return Err("not root, so no loop device can be attached".into());
    }
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(file)
        .output()
        .map_err(|e| format!("cannot run losetup: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "losetup cannot attach a loop device here: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(Loop(
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// `--device` onto a block device (a loop device over a file with old
/// random content): the image's bytes exactly, zero blocks made zero, the
/// rest of the device kept; a device opened exclusively elsewhere (as a
/// mounted one is) is refused. Skips, saying why, where no loop device can
/// be attached (not root, no loop support in a container).
#[test]
fn device_onto_loop_block_device() {
    let d = tempfile::tempdir().unwrap();
    let (vhdx, data) = source(d.path());
    let backing = d.path().join("backing.img");
    let tail = random_bytes(2 << 20, 13);
    let mut old = random_bytes(data.len(), 14);
    old.extend_from_slice(&tail);
    write_raw(&backing, &old);
    let dev = match attach_loop(&backing) {
        Ok(l) => l,
        Err(why) => {
            skip(&format!("no block device to write onto: {why}"));
            return;
        }
    };
    let dev_path = PathBuf::from(&dev.0);
    let before = identity(&dev_path);

    // Held with O_EXCL (as the kernel holds a mounted device): refused.
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _excl = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(&dev_path)
            .unwrap();
        let err = vhdkit_fails(Some(1), &["convert", "--device", s(&vhdx), s(&dev_path)]);
        assert!(
            err.contains("in use") && err.contains(s(&dev_path)),
            "{err}"
        );
    }
    assert!(
        fs::read(&backing).unwrap() == old,
        "a refused write changed the device"
    );

    // A child another test started may still hold a copy of the O_EXCL
    // descriptor until it executes its program: retry briefly while busy.
    for attempt in 0.. {
        let (code, _, err) = vhdkit_run(&["convert", "--device", s(&vhdx), s(&dev_path)]);
        if code == 0 {
            break;
        }
        assert!(err.contains("in use") && attempt < 20, "{err}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(identity(&dev_path), before);
    let got = fs::read(&dev_path).unwrap();
    assert!(
        got[..data.len()] == data[..],
        "device content differs from the source"
    );
    assert!(got[data.len()..] == tail[..], "the device's tail changed");

    // Through a symbolic link (as /dev/disk/by-id names disks).
    let link = d.path().join("disk-link");
    symlink(&dev_path, &link).unwrap();
    vhdkit_ok_output(&["convert", "--device", s(&vhdx), s(&link)]);
    drop(dev);
    assert!(fs::read(&backing).unwrap()[..data.len()] == data[..]);

    // A device smaller than the image is refused.
    let small = d.path().join("small.img");
    write_raw(&small, &old[..data.len() - (1 << 20)]);
    let small_dev = match attach_loop(&small) {
        Ok(l) => l,
        Err(why) => panic!("a second loop device could not be attached: {why}"),
    };
    let err = vhdkit_fails(Some(1), &["convert", "--device", s(&vhdx), &small_dev.0]);
    assert!(
        err.contains("block device holds") && err.contains("less than"),
        "{err}"
    );
    drop(small_dev);
    assert!(fs::read(&small).unwrap() == old[..data.len() - (1 << 20)]);
}

/// An interrupted `--device` write cannot be undone, and says so: SIGINT
/// part-way exits 130 with a note that DST is left partly written (and no
/// claim that anything was cleaned up). A signal that comes after the
/// write completed and was synced is no interruption: exit 0, the whole
/// content on the target.
#[test]
fn interrupted_device_write_says_target_is_partly_written() {
    use std::os::unix::fs::FileExt;
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src.raw");
    // 256 MiB of data with no zero piece (so every byte is written, then
    // synced, which keeps the write going long after its first bytes
    // land), in a 1 GiB raw file whose end is a hole.
    let size: u64 = 1 << 30;
    const DATA: u64 = 256 << 20;
    let piece: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251 + 1) as u8).collect();
    {
        let f = fs::File::create(&src).unwrap();
        f.set_len(size).unwrap();
        for k in 0..DATA / piece.len() as u64 {
            f.write_all_at(&piece, k * piece.len() as u64).unwrap();
        }
    }
    let target = d.path().join("target.img");
    fs::File::create(&target).unwrap().set_len(size).unwrap();
    let mut child = Command::new(vhdkit_bin())
        .args(["convert", "--device", "-q", s(&src), s(&target)])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the write is seen to have begun (its first bytes are on
    // the target), or the process has ended (then it is not signalled).
    let watch = fs::File::open(&target).unwrap();
    let mut head = [0u8; 4];
    loop {
        watch.read_exact_at(&mut head, 0).unwrap();
        if head[..] == piece[..4] || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    if child.try_wait().unwrap().is_none() {
        // SAFETY: kill sends a signal to our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(fs::metadata(&target).unwrap().len(), size);
    if out.status.code() == Some(0) {
        // Completed and synced before the signal: no note, all written.
        assert!(err.is_empty(), "{err}");
        let mut got = vec![0u8; piece.len()];
        for k in 0..size / piece.len() as u64 {
            watch
                .read_exact_at(&mut got, k * piece.len() as u64)
                .unwrap();
            let want_zero = k * piece.len() as u64 >= DATA;
            assert!(
                if want_zero {
                    got.iter().all(|&b| b == 0)
                } else {
                    got == piece
                },
                "MiB {k} of the target differs after a successful write"
            );
        }
        skip("the write completed and was synced before the interrupt arrived");
        return;
    }
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted")
            && err.contains(s(&target))
            && err.contains("left partly written"),
        "{err}"
    );
}

/// `--device` onto a loop device whose backing file is SRC, or the parent
/// of SRC, would destroy the source while it is read: refused with exit 1
/// naming the source, nothing written. Skips, saying why, where no loop
/// device can be attached. (The comparison itself is unit-tested in
/// `vhdkit::unstable::device`.)
#[test]
fn device_onto_a_loop_device_over_the_source_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src.raw");
    let data = random_bytes(4 << 20, 21);
    write_raw(&src, &data);
    let dev = match attach_loop(&src) {
        Ok(l) => l,
        Err(why) => {
            skip(&format!("no loop device over the source: {why}"));
            return;
        }
    };
    let err = vhdkit_fails(Some(1), &["convert", "--device", s(&src), &dev.0]);
    assert!(
        err.contains("loop device backed by the source") && err.contains(s(&src)),
        "{err}"
    );
    // The loop device as SRC and its backing file as the target.
    let err = vhdkit_fails(Some(1), &["convert", "--device", &dev.0, s(&src)]);
    assert!(err.contains("backs the loop device"), "{err}");
    drop(dev);
    assert!(fs::read(&src).unwrap() == data, "the source changed");

    // A differencing child whose parent backs the loop device.
    let parent = d.path().join("p.vhdx");
    vhdkit_ok_output(&["convert", s(&src), s(&parent)]);
    let child = d.path().join("c.vhdx");
    vhdkit_ok_output(&["create", "--parent", s(&parent), s(&child)]);
    let before = fs::read(&parent).unwrap();
    let dev = attach_loop(&parent).unwrap_or_else(|why| panic!("second attach: {why}"));
    let err = vhdkit_fails(Some(1), &["convert", "--device", s(&child), &dev.0]);
    assert!(
        err.contains("loop device backed by the source") && err.contains(s(&parent)),
        "{err}"
    );
    drop(dev);
    assert!(fs::read(&parent).unwrap() == before, "the parent changed");
}

/// `--device` onto SRC itself (through another name) is refused.
#[test]
fn device_onto_the_source_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src.raw");
    let data = random_bytes(1 << 20, 22);
    write_raw(&src, &data);
    let hard = d.path().join("hard.img");
    fs::hard_link(&src, &hard).unwrap();
    for dst in [&src, &hard] {
        vhdkit_fails(Some(1), &["convert", "--device", s(&src), s(dst)]);
    }
    assert!(fs::read(&src).unwrap() == data);
}

/// A loop device over a loop device over the source: the guard follows
/// each loop's backing file down to the end, for the target and for a
/// source that is itself a loop device, and refuses when the chains meet.
#[test]
fn device_loop_over_loop_over_the_source_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (vhdx, _) = source(d.path());
    // Room for the whole virtual disk, so that only the guard refuses.
    let src = d.path().join("v.vhdx");
    fs::copy(&vhdx, &src).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&src)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let before = fs::read(&src).unwrap();
    let a = match attach_loop(&src) {
        Ok(l) => l,
        Err(why) => {
            skip(&format!("no loop device to stack: {why}"));
            return;
        }
    };
    let b = match attach_loop(Path::new(&a.0)) {
        Ok(l) => l,
        Err(why) => {
            skip(&format!("no loop device over a loop device: {why}"));
            return;
        }
    };
    let err = vhdkit_fails(Some(1), &["convert", "--device", s(&src), &b.0]);
    assert!(
        err.contains("same file") && err.contains(s(&src)) && err.contains("nothing was written"),
        "{err}"
    );
    // The outer loop as SRC and the file under both as the target.
    let err = vhdkit_fails(
        Some(1),
        &["convert", "--device", "-O", "raw", &b.0, s(&src)],
    );
    assert!(err.contains("same file") || err.contains("backs"), "{err}");
    drop(b);
    drop(a);
    assert!(fs::read(&src).unwrap() == before, "the source changed");
}
