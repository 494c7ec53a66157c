//! Crash safety of `rebase` (issue 14, acceptance 2): the rebase runs on a
//! [`FaultStorage`] holding the child that loses power at storage operation
//! N, for every N it reaches, in both fault models. After each crash the
//! child opens over its old base or over the new one and reads exactly its
//! original content; `check` finds nothing worse than leaked space; and
//! running the rebase again completes it.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use vhdkit::reparent::{rebase, rebase_in};
use vhdkit::{OpenOptions, Severity};

const MIB: usize = 1 << 20;

fn write_pattern(img: &Path, off: usize, len: usize, byte: u8) {
    vhdkit_ok([
        "write",
        s(img),
        "--offset",
        &off.to_string(),
        "--pattern",
        &byte.to_string(),
        "--length",
        &len.to_string(),
    ]);
}

fn crash(ext: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [old, child, newb] = ["old", "child", "new"].map(|n| d.join(format!("{n}.{ext}")));
    vhdkit_ok(["create", s(&old), "8M"]);
    let data = random_bytes(3 * MIB, 5);
    let input = d.join("in.bin");
    write_raw(&input, &data);
    vhdkit_ok(["write", s(&old), "--offset", "0", "--input", s(&input)]);
    vhdkit_ok(["create", "--parent", s(&old), s(&child)]);
    write_pattern(&child, MIB + 512, 3 * 512, 0x22);
    write_pattern(&child, 5 * MIB, 4096, 0x23);
    // The new base shares the first MiB with the old one, differs in the
    // next two, and has data where the old one has zeros.
    vhdkit_ok(["create", s(&newb), "8M"]);
    let mut other = data.clone();
    for b in &mut other[MIB + 100_000..2 * MIB + 3] {
        *b = b.wrapping_add(1);
    }
    write_raw(&input, &other);
    vhdkit_ok(["write", s(&newb), "--offset", "0", "--input", s(&input)]);
    write_pattern(&newb, 6 * MIB, 8192, 0x99);
    write_pattern(&newb, 8 * MIB - 4096, 4096, 0x98);
    let model = read_image(&child);
    let (old_canon, new_canon) = (
        std::fs::canonicalize(&old).unwrap(),
        std::fs::canonicalize(&newb).unwrap(),
    );
    let image = std::fs::read(&child).unwrap();
    let here = d.join(format!("crashed.{ext}"));
    let (mut states, mut saw_old, mut saw_new) = (0, false, false);
    for mode in [CrashMode::Prefix { tear: true }, CrashMode::Subset] {
        for n in 0.. {
            let fs = FaultStorage::new(image.clone(), n, mode, n * 17 + 1);
            let r = rebase_in(Arc::new(fs.clone()), &here, &newb);
            if !fs.crashed() {
                r.expect("rebase without a crash");
                break;
            }
            assert!(r.is_err(), "a crash at op {n} must be reported");
            states += 1;
            let ctx = format!("{mode:?} crash at op {n}");
            std::fs::write(&here, fs.durable()).unwrap();
            let disk = vhdkit::open(&here, &OpenOptions::new())
                .unwrap_or_else(|e| panic!("{ctx}: the child does not open: {e}"));
            let p = disk.info().parent.unwrap().path.unwrap();
            let p = std::fs::canonicalize(p).unwrap();
            assert!(p == old_canon || p == new_canon, "{ctx}: parent {p:?}");
            saw_old |= p == old_canon;
            saw_new |= p == new_canon;
            assert!(read_disk(disk.as_ref()) == model, "{ctx}: content differs");
            drop(disk);
            let r = vhdkit::check(&here, &OpenOptions::new(), false).unwrap();
            for f in &r.findings {
                assert!(
                    matches!(f.severity, Severity::Leak | Severity::Info),
                    "{ctx}: finding {f:?}"
                );
            }
            rebase(&here, &newb).unwrap_or_else(|e| panic!("{ctx}: re-running fails: {e}"));
            let r = vhdkit::check(&here, &OpenOptions::new(), false).unwrap();
            for f in &r.findings {
                assert!(
                    f.severity == Severity::Leak,
                    "{ctx}: after re-running: {f:?}"
                );
            }
            let disk = vhdkit::open(&here, &OpenOptions::new()).unwrap();
            let p = std::fs::canonicalize(disk.info().parent.unwrap().path.unwrap()).unwrap();
            assert_eq!(p, new_canon, "{ctx}: not over the new base");
            assert!(
                read_disk(disk.as_ref()) == model,
                "{ctx}: content after re-running"
            );
        }
    }
    assert!(states >= 20, "only {states} crash points");
    assert!(
        saw_old && saw_new,
        "crashes left the child over the old ({saw_old}) and the new ({saw_new}) base"
    );
}

#[test]
fn vhd_rebase_survives_a_crash_anywhere() {
    crash("vhd");
}

#[test]
fn vhdx_rebase_survives_a_crash_anywhere() {
    crash("vhdx");
}
