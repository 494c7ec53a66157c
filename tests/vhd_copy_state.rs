//! How `check` judges a VHD footer copy (offset 0) that is whole but
//! differs from the footer at the end (issue 14, acceptance 2): the state
//! an update interrupted between the two writes leaves (another size and
//! geometry, another unique id, another data offset pointing at a whole
//! older dynamic header) is reported as such, not as damage, and a repair
//! rewrites it; a copy that differs in anything such an update never
//! changes (disk type, time stamp, a data offset pointing at no header)
//! stays an error.

mod common;

use std::path::Path;

use common::*;
use vhdkit::OpenOptions;
use vhdkit::report::{FindingKind, Severity};

/// The footer copy of `img` changed by `edit`, its checksum recomputed.
fn edit_copy(img: &Path, edit: impl FnOnce(&mut [u8])) {
    let mut b = std::fs::read(img).unwrap();
    let c = &mut b[..512];
    edit(c);
    c[64..68].fill(0);
    let sum: u32 = c.iter().map(|&x| u32::from(x)).sum();
    c[64..68].copy_from_slice(&(!sum).to_be_bytes());
    std::fs::write(img, b).unwrap();
}

/// The `CopyDiffers` findings of `check` on `img`, and its exit code.
fn copy_findings(img: &Path) -> (Vec<(Severity, String)>, i32) {
    let r = vhdkit::check(img, &OpenOptions::new(), false).unwrap();
    let v = r
        .findings
        .iter()
        .filter(|f| f.kind == FindingKind::CopyDiffers)
        .map(|f| (f.severity, f.message.clone()))
        .collect();
    (v, r.exit_code())
}

fn image(dir: &Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    vhdkit_ok(["create", s(&p), "8M"]);
    vhdkit_ok([
        "write",
        s(&p),
        "--offset",
        "0",
        "--pattern",
        "3",
        "--length",
        "4096",
    ]);
    p
}

#[test]
fn an_interrupted_update_is_reported_and_repaired_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // Another unique id.
    let a = image(dir.path(), "id.vhd");
    edit_copy(&a, |c| c[68..84].copy_from_slice(&[0x5a; 16]));
    // Another size and geometry (as before a grow).
    let b = image(dir.path(), "size.vhd");
    edit_copy(&b, |c| {
        c[40..48].copy_from_slice(&(4u64 << 20).to_be_bytes());
        c[48..56].copy_from_slice(&(4u64 << 20).to_be_bytes());
        c[56..60].copy_from_slice(&[0, 0x78, 4, 17]);
    });
    for (img, what) in [(&a, "unique id"), (&b, "size, geometry")] {
        let (found, code) = copy_findings(img);
        assert_eq!(found.len(), 1, "{found:?}");
        let (sev, msg) = &found[0];
        assert_eq!(*sev, Severity::Info, "{msg}");
        assert!(msg.contains(what) && msg.contains("interrupted"), "{msg}");
        assert_eq!(code, 0);
        let out = vhdkit_stdout(&["check", s(img)]);
        assert!(out.contains("interrupted"), "{out}");
        vhdkit_ok(["check", "--repair", s(img)]);
        assert!(copy_findings(img).0.is_empty());
    }
}

#[test]
fn a_set_parent_interrupted_before_the_copy_points_at_the_old_header() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let base = image(&a, "base.vhd");
    let child = a.join("child.vhd");
    vhdkit_ok(["create", "--parent", s(&base), s(&child)]);
    let before = std::fs::read(&child).unwrap();
    let moved = b.join("base.vhd");
    std::fs::rename(&base, &moved).unwrap();
    vhdkit_ok(["set-parent", s(&child), s(&moved)]);
    // The copy as it was before: the old data offset (the old header is
    // still there, whole).
    let mut after = std::fs::read(&child).unwrap();
    after[..512].copy_from_slice(&before[..512]);
    std::fs::write(&child, &after).unwrap();
    let (found, code) = copy_findings(&child);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, Severity::Info, "{}", found[0].1);
    assert!(found[0].1.contains("data offset"), "{}", found[0].1);
    assert_eq!(code, 0);
    // Running set-parent again only rewrites the copy.
    vhdkit_ok(["set-parent", s(&child), s(&moved)]);
    let now = std::fs::read(&child).unwrap();
    assert_eq!(now.len(), after.len(), "nothing else was written");
    assert!(copy_findings(&child).0.is_empty());
    assert_eq!(vhdkit_run(&["check", s(&child)]).0, 0);

    // The old header damaged: the copy no longer looks like an
    // interrupted update.
    let mut bad = now.clone();
    bad[..512].copy_from_slice(&before[..512]);
    bad[512 + 100] ^= 0xff;
    std::fs::write(&child, &bad).unwrap();
    let (found, code) = copy_findings(&child);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, Severity::Error, "{}", found[0].1);
    assert!(found[0].1.contains("data offset"), "{}", found[0].1);
    assert_eq!(code, 2);
}

/// A change made to a footer copy.
type Edit = fn(&mut [u8]);

#[test]
fn a_copy_no_update_makes_stays_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Edit, &str); 4] = [
        (
            "type.vhd",
            |c| c[60..64].copy_from_slice(&4u32.to_be_bytes()),
            "disk type",
        ),
        ("time.vhd", |c| c[24] ^= 1, "time stamp"),
        (
            "offset.vhd",
            |c| c[16..24].copy_from_slice(&4096u64.to_be_bytes()),
            "data offset",
        ),
        (
            "mixed.vhd",
            |c| {
                c[68] ^= 1;
                c[28] ^= 1;
            },
            "creator, unique id",
        ),
    ];
    for (name, edit, what) in cases {
        let img = image(dir.path(), name);
        edit_copy(&img, edit);
        let (found, code) = copy_findings(&img);
        assert_eq!(found.len(), 1, "{name}: {found:?}");
        let (sev, msg) = &found[0];
        assert_eq!(*sev, Severity::Error, "{name}: {msg}");
        assert!(msg.contains(what), "{name}: {msg}");
        assert_eq!(code, 2, "{name}");
    }
}
