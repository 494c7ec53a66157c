//! Differencing identities (issue 12, point 5): a child whose parent was
//! written after the child was made still works with `info` and `map`,
//! which warn with both ids; reads refuse it unless `--ignore-parent-id`;
//! `info` names a VHDX's two identities; `write` into a parent warns about
//! the children beside it; a zero-length write changes no id.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{code_out_err, info_json, s, vhdkit, vhdkit_ok, vhdkit_stdout};

/// A VHDX (or VHD) parent with data and a child over it, in a new folder.
fn family(ext: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().join(format!("p.{ext}"));
    let child = tmp.path().join(format!("c.{ext}"));
    vhdkit_ok(["create", s(&parent), "8M"]);
    write(&parent, "0xab", "4M", &[]);
    vhdkit_ok(["create", "--parent", s(&parent), s(&child)]);
    (tmp, parent, child)
}

/// `vhdkit write IMAGE --offset 0 --pattern BYTE --length LEN EXTRA...`; returns stderr.
fn write(image: &Path, byte: &str, len: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "write",
        s(image),
        "--offset",
        "0",
        "--pattern",
        byte,
        "--length",
        len,
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = code_out_err(&vhdkit(&args));
    assert_eq!(code, 0, "write failed: {out}{err}");
    err
}

fn data_write_id(p: &Path) -> String {
    info_json(p)["data_write_id"].as_str().unwrap().to_string()
}

#[test]
fn info_and_map_work_on_a_child_whose_parent_was_written() {
    let (_tmp, parent, child) = family("vhdx");
    let expected = data_write_id(&parent);
    let v = info_json(&child);
    assert_eq!(v["parent"]["id"], expected.as_str());
    assert_eq!(v["parent"]["found_id"], expected.as_str());
    assert_eq!(v["parent"]["id_matches"], true);
    assert_eq!(v["parent"]["id_name"], "data write id");
    write(&parent, "0xcd", "1", &["--no-children-check"]);
    let found = data_write_id(&parent);
    assert_ne!(
        found, expected,
        "a write changes the parent's data write id"
    );

    // info: works, exit 0, the mismatch as a warning with both ids.
    let (code, out, err) = code_out_err(&vhdkit(["info", "--json", s(&child)]));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p = &v["parent"];
    assert_eq!(p["found"], true);
    assert_eq!(p["id"], expected.as_str(), "the key kept its meaning");
    assert_eq!(p["found_id"], found.as_str());
    assert_eq!(p["id_matches"], false);
    assert_eq!(p["read_refused"], true);
    let warnings: Vec<&str> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    let w = warnings
        .iter()
        .find(|w| w.contains(&expected) && w.contains(&found))
        .unwrap_or_else(|| panic!("no warning with both ids: {warnings:?}"));
    assert!(w.contains("--ignore-parent-id"), "{w}");
    assert!(err.contains(&expected) && err.contains(&found), "{err}");
    let text = vhdkit_stdout(&["info", s(&child)]);
    for needle in [
        "parent id (expected data write id of parent)",
        "parent's data write id (found)",
        "NOT the recorded parent",
        "WARNING",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    assert!(!text.contains("ids match"), "{text}");

    // map: works, the child's ranges still shown as the parent's.
    let (code, out, err) = code_out_err(&vhdkit(["map", "--json", s(&child)]));
    assert_eq!(code, 0, "{err}");
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m[0]["kind"], "parent");
    assert!(err.contains(&expected) && err.contains(&found), "{err}");

    // Reads fail closed, naming both ids and the way out.
    let (code, _, err) = code_out_err(&vhdkit([
        "read",
        s(&child),
        "--offset",
        "0",
        "--length",
        "1",
    ]));
    assert_eq!(code, 1);
    assert!(
        err.contains(&expected) && err.contains(&found) && err.contains("--ignore-parent-id"),
        "{err}"
    );
    let out_img = child.with_file_name("out.raw");
    let (code, _, err) = code_out_err(&vhdkit(["convert", "-q", s(&child), s(&out_img)]));
    assert_eq!(code, 1, "{err}");
    assert!(!out_img.exists());
    let (code, _, err) = code_out_err(&vhdkit(["compare", s(&child), s(&parent)]));
    assert_eq!(code, 2, "{err}");
    // check: could not check (exit 1), the mismatch listed.
    let (code, out, _) = code_out_err(&vhdkit(["check", s(&child)]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not checked") && out.contains(&found), "{out}");

    // --ignore-parent-id reads, and info still shows the mismatch.
    let out = vhdkit_ok([
        "read",
        "--ignore-parent-id",
        s(&child),
        "--offset",
        "0",
        "--length",
        "1",
    ]);
    assert_eq!(out, vec![0xcd]);
    let (code, out, err) =
        code_out_err(&vhdkit(["info", "--json", "--ignore-parent-id", s(&child)]));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["parent"]["id_matches"], false);
    assert_eq!(v["parent"]["read_refused"], false);
    assert!(
        v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains(&found)),
        "{v:#}"
    );
    let text = vhdkit_stdout(&["info", "--ignore-parent-id", s(&child)]);
    assert!(
        text.contains("NOT the recorded parent") && !text.contains("ids match"),
        "{text}"
    );
}

#[test]
fn info_names_both_vhdx_identities() {
    let (_tmp, parent, child) = family("vhdx");
    let v = info_json(&parent);
    let disk_id = v["disk_id"].as_str().unwrap();
    let dwg = v["data_write_id"].as_str().unwrap();
    assert_ne!(disk_id, dwg);
    let text = vhdkit_stdout(&["info", s(&parent)]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("virtual disk id") && l.contains(disk_id)),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("data write id") && l.contains(dwg)),
        "{text}"
    );
    // What the child records is the parent's data write id, under that name.
    let text = vhdkit_stdout(&["info", s(&child)]);
    assert!(
        text.lines().any(
            |l| l.starts_with("parent id (expected data write id of parent)") && l.contains(dwg)
        ),
        "{text}"
    );
    // The virtual disk id stays across writes; the data write id does not.
    write(&parent, "0x01", "512", &["--no-children-check"]);
    let w = info_json(&parent);
    assert_eq!(w["disk_id"], disk_id);
    assert_ne!(w["data_write_id"], dwg);
    // VHD has one identity, which its children record.
    let (_t2, vparent, vchild) = family("vhd");
    let pv = info_json(&vparent);
    assert!(pv.get("data_write_id").is_none(), "{pv:#}");
    let cv = info_json(&vchild);
    assert_eq!(cv["parent"]["id"], pv["disk_id"]);
    assert_eq!(cv["parent"]["id_name"], "unique id");
}

#[test]
fn zero_length_writes_change_no_id() {
    let (_tmp, parent, child) = family("vhdx");
    let before = std::fs::read(&parent).unwrap();
    let dwg = data_write_id(&parent);
    let err = write(&parent, "0x77", "0", &[]);
    assert!(!err.contains("warning"), "{err}");
    assert_eq!(data_write_id(&parent), dwg);
    assert!(std::fs::read(&parent).unwrap() == before, "file unchanged");
    assert_eq!(info_json(&child)["parent"]["id_matches"], true);
    // Any write with data changes it, even one that stores nothing new.
    write(&parent, "0x00", "512", &["--no-children-check"]);
    assert_ne!(data_write_id(&parent), dwg);
}

#[test]
fn writing_a_parent_warns_about_its_children() {
    let (tmp, parent, child) = family("vhdx");
    // A second child with a Hyper-V checkpoint extension, a grandchild
    // (whose parent is the child, not this image) and an unrelated image.
    let second = tmp.path().join("snap.avhdx");
    vhdkit_ok(["create", "--parent", s(&parent), s(&second)]);
    let grand = tmp.path().join("g.vhdx");
    vhdkit_ok(["create", "--parent", s(&child), s(&grand)]);
    vhdkit_ok(["create", s(&tmp.path().join("other.vhdx")), "1M"]);
    std::fs::write(tmp.path().join("junk.vhd"), b"not an image").unwrap();
    let err = write(&parent, "0x12", "1", &[]);
    assert!(err.contains("warning"), "{err}");
    assert!(
        err.contains("c.vhdx") && err.contains("snap.avhdx"),
        "names the children: {err}"
    );
    assert!(
        !err.contains("g.vhdx") && !err.contains("other.vhdx"),
        "only children of this image: {err}"
    );
    assert!(
        err.contains("no longer open") && err.contains("--no-children-check"),
        "{err}"
    );
    // The write happened, and the children are now mismatched.
    assert_eq!(info_json(&child)["parent"]["id_matches"], false);
    // They no longer record the current id: no warning for the next write.
    let err = write(&parent, "0x13", "1", &[]);
    assert!(!err.contains("warning"), "{err}");

    // The option silences it.
    let (_t2, p2, _c2) = family("vhdx");
    let err = write(&p2, "0x14", "1", &["--no-children-check"]);
    assert!(!err.contains("warning"), "{err}");

    // A child moved into another folder is not beside the parent.
    let (t3, p3, c3) = family("vhdx");
    let sub = t3.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::rename(&c3, sub.join("c.vhdx")).unwrap();
    let err = write(&p3, "0x15", "1", &[]);
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn writing_a_vhd_parent_warns_that_children_read_changed_data() {
    let (_tmp, parent, child) = family("vhd");
    let err = write(&parent, "0x21", "512", &[]);
    assert!(err.contains("warning") && err.contains("c.vhd"), "{err}");
    assert!(err.contains("unique id"), "{err}");
    // A VHD child still opens (its parent's unique id is unchanged).
    assert_eq!(info_json(&child)["parent"]["id_matches"], true);
    let out = vhdkit_ok(["read", s(&child), "--offset", "0", "--length", "1"]);
    assert_eq!(out, vec![0x21]);
}

/// The parent locators of the VHD `child` per `info --json`: (platform, path).
fn vhd_locators(child: &Path) -> Vec<(String, String)> {
    info_json(child)["vhd"]["dynamic_header"]["parent_locators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["platform"].as_str().unwrap().to_string(),
                l["path"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The raw data of the child's locator `platform`, from the file's bytes.
fn locator_bytes(child: &Path, platform: &str) -> Vec<u8> {
    let lay = common::SparseLayout::read(child);
    for i in 0..8u64 {
        let e = common::file_bytes(child, lay.header_offset + 576 + 24 * i, 24);
        if &e[..4] == platform.as_bytes() {
            let len = common::be32(&e, 8) as usize;
            return common::file_bytes(child, common::be64(&e, 16), len);
        }
    }
    panic!("no {platform} locator in {}", child.display());
}

/// A VHD child made on Linux records its parent as a relative W2ru path
/// with backslashes and the absolute POSIX path as a MacX file URL, never
/// as a W2ku (absolute Windows) path; vhdkit and libvhdi find the parent
/// beside it, and after both are moved together; vhdkit also through the
/// MacX URL when only the child moves.
#[test]
fn vhd_locators_hold_no_posix_path_where_windows_expects_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vm images");
    std::fs::create_dir(&dir).unwrap();
    let parent = dir.join("p.vhd");
    let child = dir.join("c.vhd");
    vhdkit_ok(["create", s(&parent), "4M"]);
    write(&parent, "0x5a", "1M", &[]);
    vhdkit_ok(["create", "--parent", s(&parent), s(&child)]);
    let canon = std::fs::canonicalize(&parent).unwrap();
    let locs = vhd_locators(&child);
    assert_eq!(
        locs,
        [
            ("W2ru".to_string(), ".\\p.vhd".to_string()),
            ("MacX".to_string(), canon.display().to_string()),
        ]
    );
    let w2ru: Vec<u8> = ".\\p.vhd"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    assert_eq!(locator_bytes(&child, "W2ru"), w2ru);
    let macx = String::from_utf8(locator_bytes(&child, "MacX")).unwrap();
    assert!(
        macx.starts_with("file:///") && macx.ends_with("/vm%20images/p.vhd"),
        "{macx}"
    );
    let read1 = |c: &Path| vhdkit_ok(["read", s(c), "--offset", "0", "--length", "1"]);
    assert_eq!(read1(&child), [0x5a]);

    // Moved together: found through the relative locator.
    let moved = tmp.path().join("moved");
    std::fs::create_dir(&moved).unwrap();
    let (mp, mc) = (moved.join("p.vhd"), moved.join("c.vhd"));
    std::fs::rename(&parent, &mp).unwrap();
    std::fs::rename(&child, &mc).unwrap();
    assert_eq!(read1(&mc), [0x5a]);
    assert!(
        info_json(&mc)["parent"]["path"]
            .as_str()
            .unwrap()
            .ends_with("moved/p.vhd")
    );
    if common::require_tool("pyvhdi") {
        // libvhdi names the parent by the header's name, found beside the child.
        let out = common::run(Command::new("/usr/bin/python3").args([
            "-c",
            "import sys, pyvhdi\nf = pyvhdi.file(); f.open(sys.argv[1]); print(f.get_parent_filename())",
            s(&mc),
        ]));
        let name = String::from_utf8(out.stdout).unwrap();
        assert_eq!(name.trim(), "p.vhd");
        let beside = mc.parent().unwrap().join(name.trim());
        let (_, data) = common::pyvhdi_read(&[&mc, &beside]);
        assert!(
            data == common::read_image(&mc),
            "libvhdi reads what vhdkit reads"
        );
    }

    // Only the child moved: found through the absolute MacX locator.
    std::fs::rename(&mp, &parent).unwrap();
    let alone = tmp.path().join("alone.vhd");
    std::fs::rename(&mc, &alone).unwrap();
    assert_eq!(read1(&alone), [0x5a]);
    assert_eq!(
        info_json(&alone)["parent"]["path"],
        canon.display().to_string()
    );
}

/// A mismatch further up the chain shows on the child too: `info` warns,
/// `check` could not check it, reads refuse.
#[test]
fn a_mismatch_up_the_chain_shows_on_the_child() {
    let (tmp, base, mid) = family("vhdx");
    let top = tmp.path().join("top.vhdx");
    vhdkit_ok(["create", "--parent", s(&mid), s(&top)]);
    assert_eq!(code_out_err(&vhdkit(["check", s(&top)])).0, 0);
    write(&base, "0x33", "1", &["--no-children-check"]);
    let found = data_write_id(&base);
    let (code, out, err) = code_out_err(&vhdkit(["info", "--json", s(&top)]));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["parent"]["id_matches"], true, "the direct parent matches");
    assert!(
        v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains(&found)),
        "{v:#}"
    );
    assert!(err.contains(&found), "{err}");
    let (code, out, _) = code_out_err(&vhdkit(["check", s(&top)]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not checked") && out.contains(&found), "{out}");
    let (code, _, err) = code_out_err(&vhdkit(["read", s(&top), "--offset", "0", "--length", "1"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&found), "{err}");
}
