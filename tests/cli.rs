//! Every `vhdkit` command, run as a user runs it, with results checked
//! against the image bytes read independently (footer fields parsed here,
//! file offsets read straight from the file) or against the source data.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use common::{vhdkit_ok_stdout as ok, vhdkit_run as run};

/// Files left in `dir` (to catch leftovers of failed runs).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// The footer's unique id, formatted from the file's bytes.
fn footer_uuid(path: &Path) -> String {
    let len = std::fs::metadata(path).unwrap().len();
    let f = file_bytes(path, len - 512, 512);
    let b = &f[68..84];
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// A raw file of mixed content.
    fn raw(&self, name: &str, size: usize, seed: u64) -> (PathBuf, Vec<u8>) {
        let p = self.p(name);
        let data = mixed_content(size, seed);
        write_raw(&p, &data);
        (p, data)
    }
}

#[test]
fn info_json_has_every_field() {
    let env = Env::new();
    let (raw, data) = env.raw("src.raw", 6 << 20, 1);
    let dynamic = env.p("d.vhd");
    let fixed = env.p("f.vhd");
    let child = env.p("c.vhd");
    ok(&["convert", "-q", s(&raw), s(&dynamic)]);
    ok(&["convert", "-q", "-t", "fixed", s(&raw), s(&fixed)]);
    ok(&["create", "--parent", s(&dynamic), s(&child)]);

    let keys = [
        "format",
        "type",
        "virtual_size",
        "file_size",
        "logical_sector_size",
        "physical_sector_size",
        "block_size",
        "disk_id",
        "creator",
        "allocated_bytes",
        "parent",
        "warnings",
    ];
    for (path, kind) in [
        (&dynamic, "dynamic"),
        (&fixed, "fixed"),
        (&child, "differencing"),
    ] {
        let v = info_json(path);
        for k in keys {
            assert!(v.get(k).is_some(), "{kind}: no {k}: {v:#}");
        }
        assert_eq!(v["format"], "vhd");
        assert_eq!(v["type"], kind);
        assert_eq!(v["virtual_size"], data.len() as u64);
        assert_eq!(v["file_size"], std::fs::metadata(path).unwrap().len());
        assert_eq!(v["logical_sector_size"], 512);
        assert_eq!(v["physical_sector_size"], 512);
        assert_eq!(v["disk_id"], footer_uuid(path));
        assert!(v["creator"].as_str().unwrap().starts_with("vhdk"), "{v:#}");
        assert_eq!(v["warnings"], serde_json::json!([]));
        let vhd = &v["vhd"];
        assert_eq!(vhd["footer"]["cookie"], "conectix");
        assert_eq!(vhd["footer"]["checksum_ok"], true);
        assert_eq!(vhd["footer"]["current_size"], data.len() as u64);
        assert!(vhd["footer"]["timestamp"].as_str().unwrap().contains('T'));
        assert!(vhd["footer"]["geometry"]["cylinders"].is_u64());
        if kind == "fixed" {
            assert_eq!(v["block_size"], serde_json::Value::Null);
            assert_eq!(v["allocated_bytes"], data.len() as u64);
            assert_eq!(v["parent"], serde_json::Value::Null);
        } else {
            assert_eq!(v["block_size"], 2 << 20);
            let h = &vhd["dynamic_header"];
            assert_eq!(h["cookie"], "cxsparse");
            assert_eq!(h["checksum_ok"], true);
            assert_eq!(h["block_size"], 2 << 20);
            assert_eq!(h["max_table_entries"], 3);
        }
        if kind == "dynamic" {
            assert_eq!(v["parent"], serde_json::Value::Null);
            // Blocks with data: every block of the 6 MiB mixed content that
            // is not all zeros.
            let nonzero = data
                .chunks(2 << 20)
                .filter(|c| c.iter().any(|&b| b != 0))
                .count() as u64;
            assert_eq!(v["allocated_bytes"], nonzero * (2 << 20));
        }
        if kind == "differencing" {
            assert_eq!(v["allocated_bytes"], 0);
            let p = &v["parent"];
            assert_eq!(p["found"], true);
            assert_eq!(p["id"], footer_uuid(&dynamic));
            assert!(p["path"].as_str().unwrap().ends_with("d.vhd"));
            let locs = vhd["dynamic_header"]["parent_locators"].as_array().unwrap();
            let platforms: Vec<&str> = locs
                .iter()
                .map(|l| l["platform"].as_str().unwrap())
                .collect();
            // The absolute path of a POSIX system is a MacX file URL, never
            // a W2ku (Windows) locator (see tests/diff_ids.rs).
            assert_eq!(platforms, ["W2ru", "MacX"], "{platforms:?}");
            assert_eq!(
                vhd["dynamic_header"]["parent_unique_id"],
                footer_uuid(&dynamic)
            );
            assert_eq!(vhd["dynamic_header"]["parent_unicode_name"], "d.vhd");
        }
    }

    let v = info_json(&raw);
    assert_eq!(v["format"], "raw");
    assert_eq!(v["virtual_size"], data.len() as u64);
}

#[test]
fn info_text_is_an_aligned_summary() {
    let env = Env::new();
    let img = env.p("t.vhd");
    ok(&["create", s(&img), "64M"]);
    let text = String::from_utf8(ok(&["info", s(&img)])).unwrap();
    for needle in [
        "format",
        "vhd",
        "dynamic",
        "64 MiB (67108864 bytes)",
        "block size",
        "disk id",
        "creator",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    // Values start in one column.
    let cols: Vec<usize> = text
        .lines()
        .filter_map(|l| {
            // Lines with an empty value (e.g. no parent name) have no column.
            let key_end = l.find("  ").unwrap();
            Some(key_end + l[key_end..].find(|c: char| c != ' ')?)
        })
        .collect();
    assert!(cols.len() > 10, "{text}");
    assert!(cols.windows(2).all(|w| w[0] == w[1]), "{text}");
}

#[test]
fn create_sizes_types_and_formats() {
    let env = Env::new();
    let d = env.p("a.vhd");
    ok(&["create", s(&d), "64M"]);
    let v = info_json(&d);
    assert_eq!(
        (v["type"].as_str(), v["virtual_size"].as_u64()),
        (Some("dynamic"), Some(64 << 20))
    );
    assert!(std::fs::metadata(&d).unwrap().len() < 1 << 20, "sparse");
    assert_eq!(v["block_size"], 2 << 20);

    let f = env.p("b.vhd");
    ok(&["create", "-t", "fixed", s(&f), "10M"]);
    let v = info_json(&f);
    assert_eq!(v["type"], "fixed");
    assert_eq!(v["virtual_size"], 10 << 20);
    assert_eq!(std::fs::metadata(&f).unwrap().len(), (10 << 20) + 512);

    let b = env.p("c.vhd");
    ok(&["create", "--block-size", "512K", s(&b), "3M"]);
    assert_eq!(info_json(&b)["block_size"], 512 << 10);

    // -f wins over the extension; the extension decides without it.
    let img = env.p("d.img");
    ok(&["create", "-f", "vhd", s(&img), "1M"]);
    assert_eq!(info_json(&img)["format"], "vhd");
    let r = env.p("e.raw");
    ok(&["create", s(&r), "1M"]);
    assert_eq!(std::fs::metadata(&r).unwrap().len(), 1 << 20);
    assert_eq!(info_json(&r)["format"], "raw");

    // Exact sizes are kept, CHS or not.
    for size in ["10000384", "1536K", "1G"] {
        let p = env.p(&format!("s{size}.vhd"));
        ok(&["create", s(&p), size]);
        let want = vhdkit::size::parse_size(size).unwrap();
        assert_eq!(info_json(&p)["virtual_size"], want);
    }

    // Differencing from --parent takes the parent's size.
    let c = env.p("child.vhd");
    ok(&["create", "--parent", s(&d), s(&c)]);
    let v = info_json(&c);
    assert_eq!(v["type"], "differencing");
    assert_eq!(v["virtual_size"], 64 << 20);

    // Refusals leave the directory as it was.
    let before = entries(env.dir.path());
    for args in [
        vec!["create", s(&d), "1M"],                                    // exists
        vec!["create", s(&env.p("n.vhd"))],                             // no size
        vec!["create", s(&env.p("n.vhd")), "lots"],                     // bad size
        vec!["create", s(&env.p("n.vhd")), "1001"],                     // not sectors
        vec!["create", "--block-size", "3K", s(&env.p("n.vhd")), "1M"], // bad block size
        vec!["create", s(&env.p("n.what")), "1M"],                      // unknown extension
        vec!["create", "-t", "differencing", s(&env.p("n.vhd")), "1M"], // no parent
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 1, "{args:?}");
        assert!(err.starts_with("vhdkit: error:"), "{args:?}: {err}");
    }
    assert_eq!(entries(env.dir.path()), before);
    // --force replaces.
    ok(&["create", "--force", "-t", "fixed", s(&d), "1M"]);
    assert_eq!(info_json(&d)["type"], "fixed");
}

#[test]
fn map_json_gives_maximal_runs_with_true_file_offsets() {
    let env = Env::new();
    let img = env.p("m.vhd");
    ok(&["create", "--block-size", "1M", s(&img), "8M"]);
    // Blocks 0-1 (one write), block 3 partly, block 7 at the very end.
    ok(&[
        "write",
        s(&img),
        "--offset",
        "0",
        "--pattern",
        "0x61",
        "--length",
        "2M",
    ]);
    ok(&[
        "write",
        s(&img),
        "--offset",
        "3200K",
        "--pattern",
        "0x62",
        "--length",
        "100",
    ]);
    ok(&[
        "write",
        s(&img),
        "--offset",
        "8388000",
        "--pattern",
        "0x63",
        "--length",
        "608",
    ]);
    let map = json(&ok(&["map", "--json", s(&img)]));
    let runs = map.as_array().unwrap();
    let kinds: Vec<(&str, u64, u64)> = runs
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap(),
                r["start"].as_u64().unwrap(),
                r["length"].as_u64().unwrap(),
            )
        })
        .collect();
    let m = 1u64 << 20;
    // Blocks 0 and 1 are separate in the file (a bitmap sits between), so
    // they are separate data runs; the zero runs are merged.
    assert_eq!(
        kinds,
        vec![
            ("data", 0, m),
            ("data", m, m),
            ("zero", 2 * m, m),
            ("data", 3 * m, m),
            ("zero", 4 * m, 3 * m),
            ("data", 7 * m, m),
        ]
    );
    // Maximal: no two neighbours could be merged.
    for w in runs.windows(2) {
        let same = w[0]["kind"] == w[1]["kind"];
        let contiguous = match (w[0]["file_offset"].as_u64(), w[1]["file_offset"].as_u64()) {
            (Some(a), Some(b)) => a + w[0]["length"].as_u64().unwrap() == b,
            (None, None) => true,
            _ => false,
        };
        assert!(!(same && contiguous), "{w:?}");
    }
    // Data runs point at the bytes in the file.
    let content = read_image(&img);
    for r in runs.iter().filter(|r| r["kind"] == "data") {
        let start = r["start"].as_u64().unwrap() as usize;
        let len = r["length"].as_u64().unwrap() as usize;
        let at = r["file_offset"].as_u64().unwrap();
        assert_eq!(file_bytes(&img, at, len), content[start..start + len]);
    }
    let text = String::from_utf8(ok(&["map", s(&img)])).unwrap();
    assert!(text.contains("zero") && text.contains("data"), "{text}");

    // A differencing child: parent / data / parent.
    let child = env.p("child.vhd");
    ok(&["create", "--parent", s(&img), s(&child)]);
    ok(&[
        "write",
        s(&child),
        "--offset",
        "5M",
        "--pattern",
        "0x64",
        "--length",
        "8K",
    ]);
    let map = json(&ok(&["map", "--json", s(&child)]));
    let kinds: Vec<(&str, u64, u64)> = map
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap(),
                r["start"].as_u64().unwrap(),
                r["length"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("parent", 0, 5 * m),
            ("data", 5 * m, 8192),
            ("parent", 5 * m + 8192, 3 * m - 8192)
        ]
    );
}

#[test]
fn convert_between_raw_and_vhd_keeps_content_and_exact_size() {
    let env = Env::new();
    // 10000384 bytes: a whole number of sectors, not of blocks, not CHS;
    // blocks 2 and 3 (of 2 MiB) all zeros.
    let raw = env.p("src.raw");
    let mut data = mixed_content(10_000_384, 2);
    data[4 << 20..8 << 20].fill(0);
    write_raw(&raw, &data);
    for (name, args) in [
        ("fixed.vhd", vec!["-t", "fixed"]),
        ("dyn.vhd", vec![]),
        ("dyn512k.vhd", vec!["--block-size", "512K"]),
        ("o.bin", vec!["-O", "vhd"]),
    ] {
        let out = env.p(name);
        let mut a = vec!["convert", "-q"];
        a.extend(args);
        a.extend([s(&raw), s(&out)]);
        ok(&a);
        let v = info_json(&out);
        assert_eq!(v["format"], "vhd", "{name}");
        assert_eq!(v["virtual_size"], data.len() as u64, "{name}");
        assert_eq!(read_image(&out), data, "{name}");
        // To stdout and back to a raw file.
        assert_eq!(
            ok(&["convert", "-q", s(&out), "-"]),
            data,
            "{name} to stdout"
        );
        let back = env.p(&format!("{name}.raw"));
        ok(&["convert", "-q", s(&out), s(&back)]);
        assert_eq!(std::fs::read(&back).unwrap(), data, "{name} back to raw");
        if v["type"] == "dynamic" {
            // All-zero blocks are not allocated.
            let bs = v["block_size"].as_u64().unwrap() as usize;
            let nonzero = data
                .chunks(bs)
                .filter(|c| c.iter().any(|&b| b != 0))
                .count();
            let total = data.len().div_ceil(bs);
            assert!(nonzero < total, "the content has zero blocks");
            assert_eq!(v["vhd"]["blocks"]["allocated"], nonzero as u64, "{name}");
        }
    }
    // vhd -> vhd, dynamic to fixed.
    let f2 = env.p("f2.vhd");
    ok(&["convert", "-q", "-t", "fixed", s(&env.p("dyn.vhd")), s(&f2)]);
    assert_eq!(info_json(&f2)["type"], "fixed");
    assert_eq!(read_image(&f2), data);
}

#[test]
fn convert_with_base_makes_a_small_replica_delta() {
    let env = Env::new();
    let (raw, base_data) = env.raw("base.raw", 8 << 20, 3);
    let base = env.p("base.vhd");
    ok(&["convert", "-q", s(&raw), s(&base)]);
    // The source: the base with a few scattered changes.
    let mut changed = base_data.clone();
    let mut rng = Rng::new(4);
    for _ in 0..5 {
        let off = rng.below(changed.len() as u64 - 5000) as usize;
        rng.fill(&mut changed[off..off + 3000]);
    }
    let src = env.p("src.raw");
    write_raw(&src, &changed);
    let full = env.p("full.vhd");
    ok(&["convert", "-q", s(&src), s(&full)]);
    let delta = env.p("delta.vhd");
    ok(&[
        "convert",
        "-q",
        "-B",
        s(&base),
        "--block-size",
        "512K",
        s(&src),
        s(&delta),
    ]);
    let v = info_json(&delta);
    assert_eq!(v["type"], "differencing");
    assert_eq!(v["parent"]["found"], true);
    assert_eq!(read_image(&delta), changed);
    let dsize = std::fs::metadata(&delta).unwrap().len();
    let fsize = std::fs::metadata(&full).unwrap().len();
    assert!(dsize * 2 < fsize, "delta {dsize} vs full copy {fsize}");
    // Only sectors that differ are stored: the data runs cover at most the
    // changed bytes rounded out to 4 KiB groups.
    let map = json(&ok(&["map", "--json", s(&delta)]));
    let stored: u64 = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "data")
        .map(|r| r["length"].as_u64().unwrap())
        .sum();
    assert!(stored > 0 && stored <= 5 * (3000 + 2 * 4096), "{stored}");
    // -B with stdout is refused.
    let (code, _, err) = run(&["convert", "-B", s(&base), s(&src), "-"]);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn failed_conversions_leave_no_output_behind() {
    let env = Env::new();
    let (raw, _) = env.raw("src.raw", 1 << 20, 5);
    let before = entries(env.dir.path());
    for args in [
        vec![
            "convert",
            "-q",
            "--block-size",
            "3K",
            s(&raw),
            s(&env.p("o1.vhd")),
        ],
        vec![
            "convert",
            "-q",
            "--sector-size",
            "4096",
            s(&raw),
            s(&env.p("o2.vhd")),
        ],
        vec![
            "convert",
            "-q",
            "-t",
            "differencing",
            s(&raw),
            s(&env.p("o3.vhd")),
        ],
        vec![
            "convert",
            "-q",
            s(&env.p("missing.raw")),
            s(&env.p("o4.vhd")),
        ],
        vec!["convert", "-q", s(&raw), s(&raw)],
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 1, "{args:?}");
        assert!(err.contains("error"), "{args:?}: {err}");
        assert_eq!(entries(env.dir.path()), before, "{args:?}");
    }
    // Source whose parent is gone.
    let dir2 = tempfile::tempdir().unwrap();
    let parent = dir2.path().join("p.vhd");
    let child = dir2.path().join("c.vhd");
    ok(&["create", s(&parent), "1M"]);
    ok(&["create", "--parent", s(&parent), s(&child)]);
    std::fs::remove_file(&parent).unwrap();
    let out = dir2.path().join("out.vhd");
    let (code, _, err) = run(&["convert", "-q", s(&child), s(&out)]);
    assert_eq!(code, 1);
    assert!(err.contains("p.vhd"), "{err}");
    assert_eq!(entries(dir2.path()), vec!["c.vhd".to_string()]);
}

#[test]
fn compare_exit_codes_and_first_difference() {
    let env = Env::new();
    let (raw, mut data) = env.raw("a.raw", 3 << 20, 6);
    let vhd = env.p("a.vhd");
    ok(&["convert", "-q", s(&raw), s(&vhd)]);
    let (code, out, _) = run(&["compare", s(&raw), s(&vhd)]);
    assert_eq!(code, 0);
    assert!(String::from_utf8_lossy(&out).contains("identical"));

    let off = 1_234_567usize;
    data[off] ^= 0x40;
    data[off + 10] ^= 0x40;
    let other = env.p("b.raw");
    write_raw(&other, &data);
    let (code, out, _) = run(&["compare", s(&vhd), s(&other)]);
    assert_eq!(code, 1);
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains(&format!("{off:#x}")) && out.contains(&off.to_string()),
        "{out}"
    );

    // Different sizes, same prefix: they differ at the shorter one's end.
    let short = env.p("short.raw");
    write_raw(&short, &std::fs::read(&raw).unwrap()[..1 << 20]);
    let (code, out, _) = run(&["compare", s(&raw), s(&short)]);
    assert_eq!(code, 1);
    assert!(String::from_utf8_lossy(&out).contains(&format!("{:#x}", 1 << 20)));

    let (code, _, err) = run(&["compare", s(&raw), s(&env.p("nope.vhd"))]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn read_and_write_ranges() {
    let env = Env::new();
    let img = env.p("rw.vhd");
    ok(&["create", "--block-size", "512K", s(&img), "2M"]);
    let mut model = vec![0u8; 2 << 20];
    let piece = mixed_content(700_001, 7);
    let input = env.p("in.bin");
    write_raw(&input, &piece);
    ok(&["write", s(&img), "--offset", "300001", "--input", s(&input)]);
    model[300_001..300_001 + piece.len()].copy_from_slice(&piece);
    ok(&[
        "write",
        s(&img),
        "--offset",
        "511",
        "--pattern",
        "0xee",
        "--length",
        "3",
    ]);
    model[0x1ff..0x202].fill(0xee);
    // --input with --length takes a prefix.
    ok(&[
        "write",
        s(&img),
        "--offset",
        "1M",
        "--input",
        s(&input),
        "--length",
        "10",
    ]);
    model[1 << 20..(1 << 20) + 10].copy_from_slice(&piece[..10]);
    assert_eq!(read_image(&img), model);
    assert_eq!(
        ok(&["read", s(&img), "--offset", "0", "--length", "2M"]),
        model
    );
    assert_eq!(
        ok(&["read", s(&img), "--offset", "299999", "--length", "5000"]),
        model[299_999..304_999]
    );
    assert_eq!(
        ok(&["read", s(&img), "--offset", "2M", "--length", "0"]),
        Vec::<u8>::new()
    );

    // Out of range: refused, nothing written.
    let before = std::fs::read(&img).unwrap();
    for args in [
        vec!["read", s(&img), "--offset", "2M", "--length", "1"],
        vec![
            "read",
            s(&img),
            "--offset",
            "18446744073709551615",
            "--length",
            "2",
        ],
        vec![
            "write",
            s(&img),
            "--offset",
            "2097150",
            "--pattern",
            "1",
            "--length",
            "3",
        ],
        vec![
            "write",
            s(&img),
            "--offset",
            "0",
            "--pattern",
            "256",
            "--length",
            "3",
        ],
        vec!["write", s(&img), "--offset", "0"],
    ] {
        let (code, out, err) = run(&args);
        assert_ne!(code, 0, "{args:?}");
        assert!(out.is_empty(), "{args:?}");
        assert!(!err.is_empty(), "{args:?}");
    }
    assert_eq!(std::fs::read(&img).unwrap(), before);

    // Writing into a differencing child leaves the parent alone.
    let child = env.p("child.vhd");
    ok(&["create", "--parent", s(&img), s(&child)]);
    ok(&[
        "write",
        s(&child),
        "--offset",
        "100",
        "--pattern",
        "0x01",
        "--length",
        "100",
    ]);
    let mut cm = model.clone();
    cm[100..200].fill(1);
    assert_eq!(read_image(&child), cm);
    assert_eq!(read_image(&img), model);
}

#[test]
fn real_images_through_every_reading_command() {
    let Some(fixed) = real_image("dissect/fixed.vhd") else {
        return;
    };
    let dynamic = real_image("dissect/dynamic.vhd").unwrap();
    let (code, out, _) = run(&["compare", s(&fixed), s(&dynamic)]);
    assert!(code == 0 || code == 1, "compare works on real images");
    let _ = out;
    let sector = ok(&["read", s(&fixed), "--offset", "2097152", "--length", "512"]);
    assert!(sector.iter().all(|&b| b == 0xff));
    let map = json(&ok(&["map", "--json", s(&dynamic)]));
    assert!(map.as_array().unwrap().iter().any(|r| r["kind"] == "zero"));
    assert_eq!(run(&["check", s(&dynamic)]).0, 0);
}

#[test]
fn parent_identity_is_verified_unless_overridden() {
    let env = Env::new();
    let parent = env.p("p.vhd");
    let child = env.p("c.vhd");
    ok(&["create", s(&parent), "1M"]);
    ok(&[
        "write",
        s(&parent),
        "--offset",
        "0",
        "--pattern",
        "0x11",
        "--length",
        "4096",
    ]);
    ok(&["create", "--parent", s(&parent), s(&child)]);
    let expected = footer_uuid(&parent);
    // Replace the parent by another disk of the same size.
    std::fs::remove_file(&parent).unwrap();
    ok(&["create", s(&parent), "1M"]);
    let err = open_err(&child, &vhdkit::OpenOptions::new());
    assert_eq!(err.kind(), vhdkit::ErrorKind::ParentMismatch, "{err}");
    let (code, _, stderr) = run(&["read", s(&child), "--offset", "0", "--length", "1"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&expected) && stderr.contains(&footer_uuid(&parent)),
        "{stderr}"
    );
    // The override reads through the impostor.
    let out = ok(&[
        "read",
        "--ignore-parent-id",
        s(&child),
        "--offset",
        "0",
        "--length",
        "1",
    ]);
    assert_eq!(out, vec![0]);
    // An explicit parent file is used instead of the recorded locations.
    let other = env.p("other.vhd");
    ok(&["create", s(&other), "1M"]);
    let (code, _, _) = run(&[
        "read",
        "--parent-file",
        s(&other),
        s(&child),
        "--offset",
        "0",
        "--length",
        "1",
    ]);
    assert_eq!(code, 1, "still verified");
}
