//! The exit status of `vhdkit check` for each everyday case, exactly as the
//! README documents it: 0 clean, 2 corruption found, 3 only leaked space,
//! 1 could not check (usage errors, key files that cannot be used, a key
//! that is not a recipient, a missing or mismatched parent). After
//! `--repair` the status is that of what remains. `compare` keeps its own
//! documented status for errors (2).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use vhdkit::VhdBuilder;
use vhdkit::VirtualDisk;
use vhdkit::unstable::vhd::create;

const SIZE: u64 = 4 << 20;
const BS: u32 = 512 << 10;

/// A dynamic VHD with some data in blocks 0 and 2.
fn dynamic_vhd(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let mut d = create(&path, VhdBuilder::new(SIZE).block_size(BS)).unwrap();
    d.write_at(&random_bytes(100_000, 5), 1000).unwrap();
    d.write_at(&random_bytes(50_000, 6), 2 * u64::from(BS) + 7)
        .unwrap();
    d.flush().unwrap();
    path
}

/// A VHD whose end footer's checksum is wrong (a timestamp byte changed).
fn bad_footer_vhd(dir: &Path) -> PathBuf {
    let path = dynamic_vhd(dir, "badsum.vhd");
    let len = std::fs::metadata(&path).unwrap().len();
    patch_file(&path, len - 512 + 24, &[0x12, 0x34]);
    path
}

/// A VHD with a whole block appended but never linked in the BAT.
fn leaked_vhd(dir: &Path) -> PathBuf {
    let path = dynamic_vhd(dir, "leak.vhd");
    let len = std::fs::metadata(&path).unwrap().len();
    let footer = file_bytes(&path, len - 512, 512);
    let lay = SparseLayout::read(&path);
    let leaked = len - 512;
    let span = lay.bitmap_size() + lay.block_size;
    patch_file(&path, leaked, &vec![0xffu8; lay.bitmap_size() as usize]);
    patch_file(&path, leaked + lay.bitmap_size(), &vec![0xabu8; 4096]);
    patch_file(&path, leaked + span, &footer);
    path
}

/// A differencing child whose parent was replaced by another disk of the
/// same size (its unique id no longer matches the child's record).
fn mismatched_child(dir: &Path) -> PathBuf {
    let parent = dynamic_vhd(dir, "p.vhd");
    let child = dir.join("c.vhd");
    let mut c = create(&child, VhdBuilder::new(0).differencing(&parent)).unwrap();
    c.write_at(&[9u8; 3000], 100).unwrap();
    c.flush().unwrap();
    drop(c);
    std::fs::remove_file(&parent).unwrap();
    let mut p = create(&parent, VhdBuilder::new(SIZE).block_size(BS)).unwrap();
    p.flush().unwrap();
    drop(p);
    child
}

/// A differencing child whose parent is gone.
fn orphan_child(dir: &Path) -> PathBuf {
    let parent = dynamic_vhd(dir, "gone.vhd");
    let child = dir.join("orphan.vhd");
    let mut c = create(&child, VhdBuilder::new(0).differencing(&parent)).unwrap();
    c.write_at(&[9u8; 3000], 100).unwrap();
    c.flush().unwrap();
    drop(c);
    std::fs::remove_file(&parent).unwrap();
    child
}

/// An EVHD made for the shared test key.
fn evhd(dir: &Path) -> PathBuf {
    let raw = dir.join("src.raw");
    std::fs::write(&raw, random_bytes(1 << 20, 9)).unwrap();
    let img = dir.join("e.evhd");
    make_evhd(&raw, &img);
    img
}

/// Run vhdkit; the exit status and stderr.
fn status(args: &[String]) -> (i32, String) {
    let out = vhdkit(args);
    let (code, _, err) = code_out_err(&out);
    (code, err)
}

#[test]
fn check_exit_codes_are_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |p: &Path| p.display().to_string();

    let clean = dynamic_vhd(d, "clean.vhd");
    let bad = bad_footer_vhd(d);
    let leak = leaked_vhd(d);
    let repaired = bad_footer_vhd(&{
        let sub = d.join("r");
        std::fs::create_dir(&sub).unwrap();
        sub
    });
    let mismatch = mismatched_child(d);
    let orphan = orphan_child(d);
    let e = evhd(d);
    let (stranger, stranger_pub) = keypair(d, "stranger");
    let not_a_key = d.join("notakey.txt");
    std::fs::write(&not_a_key, "just some text\n").unwrap();
    let missing_key = d.join("no-such-key.xml");

    // (name, arguments, expected status, a text stderr must hold)
    let cases: Vec<(&str, Vec<String>, i32, Option<String>)> = vec![
        ("clean VHD", vec!["check".into(), p(&clean)], 0, None),
        (
            "bad footer checksum",
            vec!["check".into(), p(&bad)],
            2,
            None,
        ),
        ("leaked block only", vec!["check".into(), p(&leak)], 3, None),
        (
            "repaired checksum",
            vec!["check".into(), "--repair".into(), p(&repaired)],
            0,
            None,
        ),
        (
            "checked again after the repair",
            vec!["check".into(), p(&repaired)],
            0,
            None,
        ),
        (
            "unknown flag",
            vec!["check".into(), "--no-such-flag".into(), p(&clean)],
            1,
            Some("--no-such-flag".into()),
        ),
        ("missing image argument", vec!["check".into()], 1, None),
        (
            "nonexistent image",
            vec!["check".into(), p(&d.join("absent.vhd"))],
            1,
            Some("absent.vhd".into()),
        ),
        (
            "nonexistent key file",
            vec!["check".into(), "--key".into(), p(&missing_key), p(&e)],
            1,
            Some("no-such-key.xml".into()),
        ),
        (
            "public key file as --key",
            vec!["check".into(), "--key".into(), p(&stranger_pub), p(&e)],
            1,
            Some("stranger.pub.xml".into()),
        ),
        (
            "non-key file as --trust",
            vec!["check".into(), "--trust".into(), p(&not_a_key), p(&e)],
            1,
            Some("notakey.txt".into()),
        ),
        (
            "key not a recipient",
            vec!["check".into(), "--key".into(), p(&stranger), p(&e)],
            1,
            None,
        ),
        (
            "parent id mismatch",
            vec!["check".into(), p(&mismatch)],
            1,
            None,
        ),
        (
            "parent id mismatch with --ignore-parent-id",
            vec!["check".into(), "--ignore-parent-id".into(), p(&mismatch)],
            1,
            Some("--ignore-parent-id".into()),
        ),
        ("missing parent", vec!["check".into(), p(&orphan)], 1, None),
        (
            "compare usage error",
            vec!["compare".into(), "--no-such-flag".into(), p(&clean)],
            2,
            Some("--no-such-flag".into()),
        ),
        (
            "compare with a missing argument",
            vec!["compare".into(), p(&clean)],
            2,
            None,
        ),
        (
            "unknown flag of another command",
            vec!["info".into(), "--no-such-flag".into(), p(&clean)],
            1,
            None,
        ),
        ("--help", vec!["check".into(), "--help".into()], 0, None),
        ("--version", vec!["--version".into()], 0, None),
    ];

    let mut wrong = Vec::new();
    for (name, args, want, needle) in &cases {
        let (code, err) = status(args);
        if code != *want {
            wrong.push(format!(
                "{name}: exit {code}, expected {want}; stderr: {err}"
            ));
        } else if let Some(n) = needle
            && !err.contains(n.as_str())
        {
            wrong.push(format!("{name}: stderr does not name {n}: {err}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `--repair` of a damage it cannot fix beside one it can: the status is
/// that of what remains, the JSON lists what was repaired, and the checksum
/// finding is gone.
#[test]
fn repair_status_reflects_what_remains() {
    let dir = tempfile::tempdir().unwrap();
    let path = bad_footer_vhd(dir.path());
    let out = vhdkit(["check", "--json", "--repair", path.to_str().unwrap()]);
    let (code, stdout, stderr) = code_out_err(&out);
    let r: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {stdout} {stderr}"));
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["status"], "clean", "{r:#}");
    assert!(!r["repaired"].as_array().unwrap().is_empty(), "{r:#}");
    assert!(r["findings"].as_array().unwrap().is_empty(), "{r:#}");
}

/// A parent of another virtual size than the child's is refused with both
/// sizes named, even with `--ignore-parent-id` (which waives identity,
/// not geometry): a 16 MiB parent under a 64 MiB child would otherwise
/// read as zeros past 16 MiB.
#[test]
fn parent_of_another_size_is_refused_even_ignoring_its_id() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("p.vhd");
    let small = d.path().join("psmall.vhd");
    let c = d.path().join("cv.vhd");
    vhdkit_ok(["create", "-f", "vhd", s(&p), "64M"]);
    vhdkit_ok(["create", "-f", "vhd", s(&small), "16M"]);
    vhdkit_ok(["create", "--parent", s(&p), s(&c)]);
    for cmd in [
        vec![
            "read",
            "--parent-file",
            s(&small),
            "--ignore-parent-id",
            s(&c),
            "--offset",
            "60M",
            "--length",
            "1",
        ],
        vec![
            "info",
            "--parent-file",
            s(&small),
            "--ignore-parent-id",
            s(&c),
        ],
    ] {
        let (code, _, err) = code_out_err(&vhdkit(&cmd));
        assert_eq!(code, 1, "{cmd:?}: {err}");
        assert!(
            err.contains("0x1000000") && err.contains("0x4000000") && err.contains(s(&small)),
            "{cmd:?}: {err}"
        );
    }
    // The right parent still opens.
    vhdkit_ok([
        "read",
        "--parent-file",
        s(&p),
        s(&c),
        "--offset",
        "60M",
        "--length",
        "1",
    ]);
}

/// A stream whose reader stops early (`| head -c 10`) is cut short, and
/// that must not look like success: `convert SRC -` and `read` exit 141
/// (128 + SIGPIPE, as a shell reports it for `cat`) without a message.
#[test]
fn output_cut_short_by_the_reader_exits_141() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("src.raw");
    write_raw(&raw, &random_bytes(8 << 20, 9));
    let vhdx = d.path().join("src.vhdx");
    vhdkit_ok(["convert", s(&raw), s(&vhdx)]);
    for args in [
        vec!["convert", s(&vhdx), "-"],
        vec!["read", s(&vhdx), "--offset", "0", "--length", "8M"],
    ] {
        let mut child = Command::new(vhdkit_bin())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut first = [0u8; 10];
        out.read_exact(&mut first).unwrap();
        drop(out);
        let done = child.wait_with_output().unwrap();
        assert_eq!(done.status.code(), Some(141), "{args:?}");
        assert!(
            done.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&done.stderr)
        );
    }
}
