//! Library error messages state facts only (issue 13, point 5): what a
//! caller can do is a typed [`vhdkit::Hint`], which the command-line tool
//! words in terms of its options. Errors reached through the library name
//! no option (`--key`, `-f raw`, ...) and no `vhdkit VERB` command.

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
    let parent = dir.path().join("p.vhdx");
    let child = dir.path().join("c.vhdx");
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
