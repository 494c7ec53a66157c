//! Library error messages state facts only (issue 13, point 5): what a
//! caller can do is a typed [`vhdkit::Hint`], which the command-line tool
//! words in terms of its options. Errors, warnings, check findings and
//! "not checked" lines reached through the library name no option
//! (`--key`, `-f raw`, ...) and no `vhdkit VERB` command.

mod common;

use std::path::Path;

use common::*;
use vhdkit::{ErrorKind, Hint, OpenOptions};

/// The command-line tool's verbs, which a library message must not name.
const VERBS: [&str; 13] = [
    "info",
    "check",
    "map",
    "create",
    "convert",
    "compare",
    "read",
    "write",
    "keygen",
    "key",
    "recipients",
    "sign",
    "rekey",
];

/// Assert that `e`'s `Display` names no command-line option or verb and
/// that its hint is `hint`.
fn assert_fact_only(e: &vhdkit::Error, hint: Hint) {
    let text = e.to_string();
    assert!(!text.contains("--"), "names an option: {text}");
    assert!(!text.contains("-f raw"), "names an option: {text}");
    assert!(!text.contains("-U"), "names an option: {text}");
    for verb in VERBS {
        assert!(
            !text.contains(&format!("vhdkit {verb}")),
            "names a command: {text}"
        );
    }
    assert_eq!(e.hint(), Some(hint), "{text}");
}

/// The error opening `path` through the library gives, or if it opens,
/// the error reading its first sector gives.
fn open_or_read_err(path: &Path) -> vhdkit::Error {
    match vhdkit::open(path, &OpenOptions::new()) {
        Err(e) => e,
        Ok(disk) => disk
            .read_at(&mut [0u8; 512], 0)
            .expect_err("the image opened and read"),
    }
}

#[test]
fn an_evhd_opened_without_a_key_says_so_without_naming_an_option() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("d.raw");
    let evhd = dir.path().join("d.evhd");
    write_raw(&raw, &random_bytes(1 << 20, 13));
    make_evhd(&raw, &evhd);
    let e = open_or_read_err(&evhd);
    assert_eq!(e.kind(), ErrorKind::KeyRequired, "{e}");
    assert!(e.to_string().contains("encrypted (EVHD)"), "{e}");
    assert_fact_only(&e, Hint::Key);
}

#[test]
fn a_damaged_image_that_may_be_raw_says_so_without_naming_an_option() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.vhdx");
    vhdkit_ok(["create", "-f", "vhdx", s(&img), "8M"]);
    // Only the metadata table at 2 MiB is left to say "VHDX".
    patch_file(&img, 0, &vec![0u8; 2 << 20]);
    let e = open_err(&img, &OpenOptions::new());
    assert_eq!(e.context(), Some("damaged VHDX image"), "{e}");
    assert!(e.to_string().contains("detected as VHDX"), "{e}");
    assert_fact_only(&e, Hint::MaybeRaw);
    // `check` lists the same damage as a finding that carries the hint.
    let r = vhdkit::check(&img, &OpenOptions::new(), false).unwrap();
    let f = r
        .findings
        .iter()
        .find(|f| f.message.contains("detected as VHDX"))
        .unwrap_or_else(|| panic!("{:?}", r.findings));
    assert_eq!(f.hint, Some(Hint::MaybeRaw), "{f:?}");
    assert!(!f.message.contains("-f raw"), "{f:?}");
}

#[test]
fn a_child_of_a_rewritten_parent_refuses_reads_without_naming_an_option() {
    let dir = tempfile::tempdir().unwrap();
    let child = stale_child(dir.path());
    let e = open_or_read_err(&child);
    assert_eq!(e.kind(), ErrorKind::ParentMismatch, "{e}");
    assert_fact_only(&e, Hint::IgnoreParentId);
}

#[test]
fn in_place_write_refusals_do_not_name_an_option() {
    use vhdkit::unstable::device::{DeviceTarget, refuse_unless_replaceable};
    let dir = tempfile::tempdir().unwrap();
    let e = DeviceTarget::open(&dir.path().join("missing")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert_fact_only(&e, Hint::CreateImageFile);

    #[cfg(unix)]
    {
        let file = dir.path().join("file");
        let link = dir.path().join("link");
        std::fs::write(&file, b"x").unwrap();
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let e = refuse_unless_replaceable(&link, true).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        assert_fact_only(&e, Hint::WriteThroughLink);
        // A caller that offers no in-place write gets no hint about one.
        let e = refuse_unless_replaceable(&link, false).unwrap_err();
        assert_eq!(e.hint(), None, "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }
}

/// The hints' wording stays with the command-line tool: the same
/// refusals through `vhdkit` still name the options.
#[test]
fn the_command_line_tool_words_the_hints_as_options() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("d.raw");
    let evhd = dir.path().join("d.evhd");
    write_raw(&raw, &random_bytes(1 << 20, 14));
    make_evhd(&raw, &evhd);
    let err = vhdkit_fails(
        Some(1),
        &["read", s(&evhd), "--offset", "0", "--length", "1"],
    );
    assert!(
        err.contains("encrypted (EVHD)") && err.contains("--key"),
        "{err}"
    );
    let missing = dir.path().join("missing");
    let err = vhdkit_fails(
        Some(1),
        &["convert", "-q", "--device", s(&raw), s(&missing)],
    );
    assert!(err.contains("leave out --device"), "{err}");
    assert!(!Path::new(&missing).exists());
}

/// Assert that a warning, finding or "not checked" text names no
/// command-line option or verb.
fn assert_text_fact_only(text: &str) {
    for option in ["--", "-f raw", "-U", "(--key)"] {
        assert!(!text.contains(option), "names an option: {text}");
    }
    for verb in VERBS {
        assert!(
            !text.contains(&format!("vhdkit {verb}")) && !text.contains(&format!("`{verb} ")),
            "names a command: {text}"
        );
    }
}

/// A child whose parent was written after it was made, in `dir`.
fn stale_child(dir: &Path) -> std::path::PathBuf {
    let parent = dir.join("p.vhdx");
    let child = dir.join("c.vhdx");
    vhdkit_ok(["create", s(&parent), "8M"]);
    vhdkit_ok(["create", "--parent", s(&parent), s(&child)]);
    vhdkit_ok([
        "write",
        s(&parent),
        "--offset",
        "0",
        "--pattern",
        "0xcd",
        "--length",
        "1",
        "--no-children-check",
    ]);
    child
}

#[test]
fn parent_mismatch_warnings_and_check_lines_do_not_name_an_option() {
    use vhdkit::report::WarningKind;
    let dir = tempfile::tempdir().unwrap();
    let child = stale_child(dir.path());
    for (ignore, kind, fact) in [
        (
            false,
            WarningKind::ParentMismatchRefused,
            "reading the child's data is refused",
        ),
        (
            true,
            WarningKind::ParentMismatchIgnored,
            "it is read anyway, so the data may be inconsistent",
        ),
    ] {
        let opts = OpenOptions::new()
            .allow_missing_parent(true)
            .ignore_parent_id(ignore);
        let info = vhdkit::open(&child, &opts).unwrap().info();
        let w: Vec<_> = info.parent_mismatch_warnings().collect();
        assert_eq!(w.len(), 1, "{:?}", info.warnings);
        assert_eq!(w[0].kind, kind, "{:?}", w[0]);
        assert!(w[0].message.ends_with(fact), "{:?}", w[0]);
        assert_text_fact_only(&w[0].message);
        assert_eq!(w[0].hint, Some(Hint::IgnoreParentId), "{:?}", w[0]);
        // `info` (text) says the state without the option either.
        let mut text = Vec::new();
        vhdkit::report::write_info_text(&info, &mut text).unwrap();
        assert_text_fact_only(&String::from_utf8(text).unwrap());
        // `check` lists the mismatch as not checked, with the same hint.
        let r = vhdkit::check(&child, &OpenOptions::new().ignore_parent_id(ignore), false).unwrap();
        let i = r
            .not_checked
            .iter()
            .position(|n| n.contains("the child expects"))
            .unwrap_or_else(|| panic!("{:?}", r.not_checked));
        assert_eq!(r.not_checked[i], w[0].message);
        assert_eq!(r.not_checked_hint(i), Some(Hint::IgnoreParentId));
    }
}

#[test]
fn evhd_signature_warnings_and_keyless_check_do_not_name_an_option() {
    use vhdkit::report::{FindingKind, WarningKind};
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("d.raw");
    let evhd = dir.path().join("d.evhd");
    write_raw(&raw, &random_bytes(1 << 20, 15));
    make_evhd(&raw, &evhd);
    // An unsigned image (a version 1 header) is said as a fact.
    let unsigned = vhdkit::SignatureStatus::Unsigned;
    let w = unsigned.as_warning().unwrap();
    assert_eq!(w.kind, WarningKind::Unsigned);
    assert!(w.message.starts_with("EVHD image is not signed"), "{w:?}");
    assert_text_fact_only(&w.message);
    assert_eq!(w.hint, Some(Hint::Sign), "{w:?}");

    // Signed by a key this reader does not trust (it holds none).
    let info = vhdkit::open(&evhd, &OpenOptions::new()).unwrap().info();
    let w = info
        .warnings
        .iter()
        .find(|w| w.kind == WarningKind::UntrustedSigner)
        .unwrap_or_else(|| panic!("{:?}", info.warnings));
    assert!(
        w.message.ends_with("which this reader does not trust"),
        "{w:?}"
    );
    assert_text_fact_only(&w.message);
    assert_eq!(w.hint, Some(Hint::Trust), "{w:?}");
    let sig = &info.details.evhd().unwrap().signature;
    assert_eq!(sig.warning(), Some(w.message.as_str()));
    assert_eq!(sig.hint(), Some(Hint::Trust));
    let r = vhdkit::check(&evhd, &OpenOptions::new(), false).unwrap();
    let f = r
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::Signature)
        .unwrap_or_else(|| panic!("{:?}", r.findings));
    assert!(
        f.message.ends_with("which this reader does not trust"),
        "{f:?}"
    );
    assert_text_fact_only(&f.message);
    assert_eq!(f.hint, Some(Hint::Trust), "{f:?}");
    let i = r
        .not_checked
        .iter()
        .position(|n| n.contains("private key of a recipient"))
        .unwrap_or_else(|| panic!("{:?}", r.not_checked));
    assert_text_fact_only(&r.not_checked[i]);
    assert_eq!(r.not_checked_hint(i), Some(Hint::Key));
}

/// Whether `f` says that log entries are pending.
fn is_pending_entries(f: &vhdkit::Finding) -> bool {
    f.kind == vhdkit::report::FindingKind::PendingLog
        && f.message.contains("not yet applied to the file")
}

/// A VHDX whose log holds an entry not yet applied to the file: power
/// fails during a write's flush at the first storage operation that leaves
/// one (the log is written and flushed before the file is updated).
fn pending_log_image(dir: &Path) -> Option<std::path::PathBuf> {
    use vhdkit::VirtualDisk;
    use vhdkit::unstable::chain::Chain;
    use vhdkit::unstable::vhdx::VhdxDisk;
    let img = dir.join("d.vhdx");
    vhdkit_ok(["create", "-f", "vhdx", s(&img), "8M"]);
    let base = std::fs::read(&img).unwrap();
    let opts = OpenOptions::new().writable(true);
    for crash_at in 1..200 {
        let fs = FaultStorage::new(base.clone(), crash_at, CrashMode::Prefix { tear: false }, 1);
        if let Ok(mut disk) = VhdxDisk::open(
            Box::new(fs.clone()),
            Some(img.clone()),
            &opts,
            &Chain::default(),
        ) {
            let _ = disk.write_at(&[0xab; 4096], 0).and_then(|_| disk.flush());
        }
        if !fs.crashed() {
            return None;
        }
        std::fs::write(&img, fs.durable()).unwrap();
        let r = vhdkit::check(&img, &OpenOptions::new(), false).unwrap();
        if r.findings.iter().any(is_pending_entries) {
            return Some(img);
        }
    }
    None
}

#[test]
fn a_pending_log_finding_does_not_name_an_option() {
    let dir = tempfile::tempdir().unwrap();
    let img = pending_log_image(dir.path()).expect("no crash point leaves a pending log");
    let r = vhdkit::check(&img, &OpenOptions::new(), false).unwrap();
    let f = r.findings.iter().find(|&f| is_pending_entries(f)).unwrap();
    assert_text_fact_only(&f.message);
    assert_eq!(f.hint, Some(Hint::Repair), "{f:?}");
    // The command-line tool still says how to apply it.
    let out = vhdkit_stdout(&["check", s(&img)]);
    assert!(
        out.contains("vhdkit replays them in memory when reading, `check --repair` applies them"),
        "{out}"
    );
}
