//! `check --chain` (issue 14, point 6): every link is opened and checked;
//! the report names the link where the chain breaks (missing file, id
//! mismatch, size mismatch, loop) with its recorded locators; the exit
//! status is `check`'s.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use vhdkit::{OpenOptions, VhdBuilder};

/// base <- mid <- top in `dir`, VHD or VHDX.
fn chain(dir: &Path, ext: &str) -> [PathBuf; 3] {
    let [base, mid, top] = ["base", "mid", "top"].map(|n| dir.join(format!("{n}.{ext}")));
    vhdkit_ok(["create", s(&base), "4M"]);
    vhdkit_ok(["create", "--parent", s(&base), s(&mid)]);
    vhdkit_ok(["create", "--parent", s(&mid), s(&top)]);
    [base, mid, top]
}

fn chain_json(top: &Path) -> (i32, serde_json::Value) {
    let (code, out, err) = vhdkit_run(&["check", "--chain", "--json", s(top)]);
    let v = serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {err}"));
    (code, v)
}

#[test]
fn a_whole_chain_is_clean() {
    for ext in ["vhd", "vhdx"] {
        let dir = tempfile::tempdir().unwrap();
        let [_, _, top] = chain(dir.path(), ext);
        let (code, v) = chain_json(&top);
        assert_eq!(code, 0, "{v}");
        assert_eq!(v["links"].as_array().unwrap().len(), 3);
        assert!(v["broken"].is_null());
        let text = vhdkit_stdout(&["check", "--chain", s(&top)]);
        assert!(text.contains("chain of 3 image(s) is complete"), "{text}");
    }
}

#[test]
fn a_missing_link_is_named_with_its_locators() {
    for ext in ["vhd", "vhdx"] {
        let dir = tempfile::tempdir().unwrap();
        let [base, _, top] = chain(dir.path(), ext);
        std::fs::remove_file(&base).unwrap();
        let (code, v) = chain_json(&top);
        assert_eq!(code, 1);
        assert_eq!(v["broken"][0], 1, "{v}");
        assert_eq!(v["broken"][1]["kind"], "missing");
        let locs = v["links"][1]["locators"].to_string();
        assert!(locs.contains("base"), "{locs}");
        let (_, out, _) = vhdkit_run(&["check", "--chain", s(&top)]);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("chain breaks at link 1"), "{text}");
        assert!(text.contains(&format!("base.{ext}")), "{text}");
    }
}

#[test]
fn another_image_at_the_parents_place_is_an_id_or_size_mismatch() {
    for ext in ["vhd", "vhdx"] {
        let dir = tempfile::tempdir().unwrap();
        let [base, _, top] = chain(dir.path(), ext);
        std::fs::remove_file(&base).unwrap();
        vhdkit_ok(["create", s(&base), "4M"]);
        let (code, v) = chain_json(&top);
        assert_eq!(code, 1);
        assert_eq!(v["broken"][1]["kind"], "id_mismatch", "{v}");
        std::fs::remove_file(&base).unwrap();
        vhdkit_ok(["create", s(&base), "8M"]);
        let (code, v) = chain_json(&top);
        assert_eq!(code, 1);
        // The id differs too; the id is what is checked first.
        assert_eq!(v["broken"][0], 1, "{v}");
    }
}

/// A link of another size than its child whose id is the recorded one is
/// a resized image, not a break: the chain holds, and each link's size is
/// reported.
#[test]
fn a_link_of_another_size_with_the_recorded_id_holds() {
    // A VHD parent keeps its unique id whatever is written: a fresh image
    // of another size with the recorded id stands in for a resized parent.
    let dir = tempfile::tempdir().unwrap();
    let [base, mid, _] = chain(dir.path(), "vhd");
    let id = open(&base).parent_link_id().unwrap();
    std::fs::remove_file(&base).unwrap();
    vhdkit::create_vhd(&base, VhdBuilder::new(8 << 20).unique_id(id)).unwrap();
    let (code, v) = chain_json(&mid);
    assert_eq!(code, 0, "{v}");
    assert!(v["broken"].is_null(), "{v}");
    assert_eq!(v["links"][1]["virtual_size"], 8 << 20, "{v}");
    assert_eq!(v["links"][0]["virtual_size"], 4 << 20, "{v}");
}

#[test]
fn a_loop_is_named() {
    // base is replaced by an image with base's id whose parent is mid:
    // mid -> base -> mid.
    let dir = tempfile::tempdir().unwrap();
    let [base, mid, _] = chain(dir.path(), "vhd");
    let id = open(&base).parent_link_id().unwrap();
    let fake = dir.path().join("fake.vhd");
    vhdkit::create_vhd(&fake, VhdBuilder::new(0).differencing(&mid).unique_id(id)).unwrap();
    std::fs::rename(&fake, &base).unwrap();
    // A loop is damage recorded in a file: `check` reports it as
    // corruption (exit 2), like any recorded path back into the chain.
    let (code, v) = chain_json(&mid);
    assert_eq!(code, 2, "{v}");
    assert_eq!(v["broken"][0], 1, "{v}");
    assert_eq!(v["broken"][1]["kind"], "loop", "{v}");
    // The library call gives the same.
    let r = vhdkit::chain_check::check_chain(&mid, &OpenOptions::new()).unwrap();
    assert_eq!(r.links.len(), 2);
    assert_eq!(r.exit_code(), 2);
}

#[test]
fn set_parent_and_rebase_onto_a_child_are_refused_as_a_loop() {
    for ext in ["vhd", "vhdx"] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(format!("p.{ext}"));
        let c = dir.path().join(format!("c.{ext}"));
        let g = dir.path().join(format!("g.{ext}"));
        vhdkit_ok(["create", s(&p), "8M"]);
        vhdkit_ok(["create", "--parent", s(&p), s(&c)]);
        vhdkit_ok(["create", "--parent", s(&c), s(&g)]);
        let before: Vec<_> = [&p, &c, &g].iter().map(|f| file_sha256(f)).collect();
        for args in [
            vec!["set-parent", "--ignore-id", s(&c), s(&g)],
            vec!["rebase", "--force", s(&c), s(&g)],
        ] {
            let err = vhdkit_fails(Some(1), &args);
            assert!(err.contains("must not loop"), "{ext} {args:?}: {err}");
            assert!(!err.contains("damaged"), "{ext} {args:?}: {err}");
        }
        let after: Vec<_> = [&p, &c, &g].iter().map(|f| file_sha256(f)).collect();
        assert_eq!(before, after, "{ext}");
    }
}

#[test]
fn a_parent_in_use_leaves_the_child_unchecked_not_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.vhdx");
    let c = dir.path().join("c.vhdx");
    vhdkit_ok(["create", s(&p), "8M"]);
    vhdkit_ok(["create", "--parent", s(&p), s(&c)]);
    let _writer = vhdkit::open(&p, &OpenOptions::new().writable(true)).unwrap();
    for args in [vec!["check", s(&c)], vec!["check", "--chain", s(&c)]] {
        let (code, out, _) = vhdkit_run(&args);
        let out = String::from_utf8_lossy(&out).into_owned();
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(out.contains("in use"), "{args:?}: {out}");
    }
}
