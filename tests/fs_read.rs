//! `ls`, `cat` and `extract` of ext4, FAT32 and NTFS file systems built in
//! the test from a directory tree (mkfs.ext4 -d, mkfs.fat + mcopy,
//! mkntfs + ntfscp), through raw, VHD, VHDX (512 and 4K sectors), a
//! differencing chain and EVHD; real dfvfs ext2 against debugfs; damaged
//! file systems fail with clear errors and no panic.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::*;

/// The tools a test needs; a missing one skips it (fails under CI).
fn have(tools: &[&str]) -> bool {
    for t in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            if std::env::var_os("CI").is_some() {
                panic!("{t} is not installed, and CI requires it");
            }
            skip(&format!("{t} is not installed"));
            return false;
        }
    }
    true
}

/// Lay out the partitions of `disk` with sfdisk's script `layout`.
fn sfdisk(disk: &Path, layout: &str) {
    use std::io::Write;
    let mut c = Command::new("sfdisk")
        .args(["-q", s(disk)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(layout.as_bytes())
        .unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "sfdisk: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn sh(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

/// Seconds since the epoch of the `i`th file's modification time: even,
/// as FAT keeps two-second steps.
fn mtime_of(i: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000 + i * 86_402)
}

/// The files of the source tree: relative path and content.
fn tree_files(flat: bool) -> Vec<(String, Vec<u8>)> {
    let mut v = vec![
        ("hello.txt".to_string(), b"hello\n".to_vec()),
        ("with space.txt".into(), random_bytes(5000, 1)),
        ("empty.bin".into(), Vec::new()),
        ("big.bin".into(), random_bytes(700_001, 2)),
    ];
    if !flat {
        v.push(("sub/one.dat".into(), random_bytes(4096, 3)));
        v.push(("sub/deep/two.dat".into(), random_bytes(8193, 4)));
        v.push(("sub/deep/further/three".into(), b"3".to_vec()));
    }
    v
}

/// Write the source tree into `dir`; `flat` leaves out directories (NTFS
/// is filled by ntfscp, which makes none).
fn make_tree(dir: &Path, flat: bool) {
    for (i, (rel, data)) in tree_files(flat).iter().enumerate() {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(mtime_of(i as u64)).unwrap();
    }
    // Directories last: writing into them changes their times.
    if !flat {
        for (i, d) in ["sub/deep/further", "sub/deep", "sub"].iter().enumerate() {
            let f = std::fs::File::open(dir.join(d)).unwrap();
            f.set_modified(mtime_of(100 + i as u64)).unwrap();
        }
    }
}

/// What `ls -R --json` must list for the tree in `dir`: path -> (type, size).
fn expected(dir: &Path) -> BTreeMap<String, (String, u64)> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, d: &Path, out: &mut BTreeMap<String, (String, u64)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.file_type().is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                out.insert(rel, ("symlink".into(), target.as_os_str().len() as u64));
            } else if m.is_dir() {
                out.insert(rel, ("dir".into(), 0));
                walk(base, &p, out);
            } else {
                out.insert(rel, ("file".into(), m.len()));
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// `ls -R --json` of `spec` as path -> (type, size), without `lost+found`.
fn listed(spec: &str, extra: &[&str]) -> BTreeMap<String, (String, u64)> {
    let mut args = vec!["ls", "-R", "--json", spec];
    args.extend_from_slice(extra);
    let out = vhdkit_ok_stdout(&args);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let mut m = BTreeMap::new();
    for e in v["entries"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        assert!(e["mtime"].is_string(), "{name} has an mtime: {e}");
        if name == "lost+found" || name.starts_with("lost+found/") {
            continue;
        }
        let kind = e["type"].as_str().unwrap().to_string();
        m.insert(name, (kind, e["size"].as_u64().unwrap()));
    }
    m
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::symlink_metadata(p).unwrap().modified().unwrap()
}

/// Extract the whole tree of `spec` and compare it with `src`: the same
/// files with the same sha256, and (`times`) the same modification times.
fn extract_matches(spec: &str, extra: &[&str], src: &Path, out: &Path, times: bool) {
    let mut args = vec!["extract", spec, s(out)];
    args.extend_from_slice(extra);
    vhdkit_ok_stdout(&args);
    let want = expected(src);
    let mut got = expected(out);
    got.retain(|k, _| k != "lost+found");
    assert_eq!(got, want, "extracted tree of {spec}");
    for (rel, (kind, _)) in &want {
        let (a, b) = (src.join(rel), out.join(rel));
        match kind.as_str() {
            "file" => assert_eq!(
                file_sha256(&a),
                file_sha256(&b),
                "{rel} extracted from {spec}"
            ),
            "symlink" => assert_eq!(
                std::fs::read_link(&a).unwrap(),
                std::fs::read_link(&b).unwrap()
            ),
            _ => {}
        }
        if times {
            assert_eq!(mtime(&a), mtime(&b), "mtime of {rel} extracted from {spec}");
        }
    }
    assert!(temp_debris(out).is_empty(), "{:?}", temp_debris(out));
}

/// The raw image `raw` as every format: (image, extra arguments).
fn formats(dir: &Path, raw: &Path) -> Vec<(PathBuf, Vec<String>)> {
    let conv = |name: &str, args: &[&str]| {
        let p = dir.join(name);
        let mut a = vec!["convert", "-q", "-f", "raw"];
        a.extend_from_slice(args);
        a.extend_from_slice(&[s(raw), s(&p)]);
        vhdkit_ok(&a);
        p
    };
    let vhd = conv("d.vhd", &["-O", "vhd"]);
    let vhdx = conv("d.vhdx", &["-O", "vhdx", "--block-size", "1M"]);
    let vhdx4k = conv(
        "d4k.vhdx",
        &["-O", "vhdx", "--block-size", "1M", "--sector-size", "4096"],
    );
    let child = dir.join("child.vhdx");
    vhdkit_ok(["create", "--parent", s(&vhdx), s(&child)]);
    let evhd = dir.join("d.evhd");
    make_evhd(&vhdx, &evhd);
    let key = test_key().1.to_string_lossy().into_owned();
    vec![
        (raw.to_path_buf(), vec![]),
        (vhd, vec![]),
        (vhdx, vec![]),
        (vhdx4k, vec![]),
        (child.clone(), vec![]),
        (
            child,
            vec!["--parent-file".into(), s(&dir.join("d.vhdx")).into()],
        ),
        (evhd, vec!["--key".into(), key]),
    ]
}

fn make_ext4(src: &Path, img: &Path) {
    std::fs::File::create(img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-d", s(src), s(img)]));
}

fn make_fat(src: &Path, img: &Path) {
    std::fs::File::create(img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run(Command::new("mkfs.fat").args(["-F", "32", s(img)]));
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        // -m keeps modification times (local time, hence TZ=UTC).
        run(Command::new("mcopy")
            .env("TZ", "UTC")
            .args(["-s", "-m", "-i", s(img), s(&p), "::/"]));
    }
}

fn make_ntfs(src: &Path, img: &Path) {
    std::fs::File::create(img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run(Command::new("mkntfs").args(["-q", "-F", s(img)]));
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        run(Command::new("ntfscp").args([s(img), s(&p), &name]));
    }
}

/// Every format of `raw` lists exactly the tree of `src` and extracts it.
fn check_all_formats(src: &Path, raw: &Path, times: bool) {
    let dir = raw.parent().unwrap();
    let want = expected(src);
    for (i, (img, extra)) in formats(dir, raw).iter().enumerate() {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let spec = format!("{}:/", img.display());
        assert_eq!(listed(&spec, &extra), want, "ls -R of {spec} {extra:?}");
        let out = dir.join(format!("out{i}"));
        extract_matches(&spec, &extra, src, &out, times);
    }
}

#[test]
fn ext4_tree_through_every_format() {
    if !have(&["mkfs.ext4"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src, false);
    std::os::unix::fs::symlink("../hello.txt", src.join("sub/link")).unwrap();
    // A link's own time, not its target's, is kept.
    let t = filetime::FileTime::from_system_time(mtime_of(150));
    filetime::set_symlink_file_times(src.join("sub/link"), t, t).unwrap();
    let f = std::fs::File::open(src.join("sub")).unwrap();
    f.set_modified(mtime_of(200)).unwrap();
    std::fs::set_permissions(
        src.join("hello.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    let raw = dir.path().join("ext4.img");
    make_ext4(&src, &raw);
    check_all_formats(&src, &raw, true);
    // Modes are kept on ext4.
    assert_eq!(
        mode(&dir.path().join("out0/hello.txt")),
        mode(&src.join("hello.txt"))
    );
    // cat and ls -l of one file.
    let spec = format!("{}:/sub/deep/two.dat", raw.display());
    assert_eq!(vhdkit_ok_stdout(&["cat", &spec]), random_bytes(8193, 4));
    let l = vhdkit_stdout(&["ls", "-l", &format!("{}:/sub", raw.display())]);
    assert!(l.contains("link -> ../hello.txt"), "{l}");
    // A single file extracts into an existing directory, never over a file.
    let one = dir.path().join("one");
    std::fs::create_dir(&one).unwrap();
    vhdkit_ok_stdout(&["extract", &spec, s(&one)]);
    assert_eq!(
        std::fs::read(one.join("two.dat")).unwrap(),
        random_bytes(8193, 4)
    );
    let err = vhdkit_fails(Some(1), &["extract", &spec, s(&one)]);
    assert!(err.contains("two.dat"), "{err}");
}

#[test]
fn fat32_tree_through_every_format() {
    if !have(&["mkfs.fat", "mcopy"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src, false);
    let raw = dir.path().join("fat.img");
    make_fat(&src, &raw);
    check_all_formats(&src, &raw, true);
}

#[test]
fn ntfs_files_and_alternate_streams() {
    if !have(&["mkntfs", "ntfscp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src, true);
    let raw = dir.path().join("ntfs.img");
    make_ntfs(&src, &raw);
    // ntfscp sets the time of copying: times are compared with `ls` below.
    check_all_formats(&src, &raw, false);
    let ads = dir.path().join("ads");
    std::fs::write(&ads, b"a hidden stream\n").unwrap();
    run(Command::new("ntfscp").args(["-N", "extra", s(&raw), s(&ads), "hello.txt"]));
    let l = vhdkit_stdout(&["ls", "-l", &format!("{}:/", raw.display())]);
    assert!(
        l.lines()
            .any(|x| x.contains("hello.txt:extra") && x.contains(" 16 ")),
        "{l}"
    );
    let v: serde_json::Value = serde_json::from_slice(&vhdkit_ok_stdout(&[
        "ls",
        "--json",
        &format!("{}:/hello.txt", raw.display()),
    ]))
    .unwrap();
    assert_eq!(v["entries"][0]["streams"][0]["name"], "extra", "{v}");
    let spec = format!("{}:/hello.txt:extra", raw.display());
    assert_eq!(vhdkit_ok_stdout(&["cat", &spec]), b"a hidden stream\n");
    let spec = format!("{}:/hello.txt", raw.display());
    assert_eq!(vhdkit_ok_stdout(&["cat", &spec]), b"hello\n");
    // The extracted file has the time `ls` shows.
    let out = dir.path().join("one");
    vhdkit_ok_stdout(&["extract", &spec, s(&out)]);
    let when = v["entries"][0]["mtime"].as_str().unwrap().to_string();
    let secs = mtime(&out)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let shown: i64 = sh(Command::new("date").args(["-d", &when, "+%s"]))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(secs, shown, "{when}");
}

/// Names of a directory as `debugfs -R "ls -p DIR"` lists them (without
/// `.` and `..`): name -> (is a directory, size).
fn debugfs_ls(raw: &Path, dir: &str) -> BTreeMap<String, (bool, u64)> {
    let out = sh(Command::new("debugfs").args(["-R", &format!("ls -p {dir}"), s(raw)]));
    let mut m = BTreeMap::new();
    for line in out.lines() {
        // /inode/mode/uid/gid/name/size/
        let f: Vec<&str> = line.split('/').collect();
        if f.len() < 7 || f[5] == "." || f[5] == ".." || f[5].is_empty() {
            continue;
        }
        let mode = u32::from_str_radix(f[2], 8).unwrap();
        let is_dir = mode & 0o170000 == 0o040000;
        let size = if is_dir { 0 } else { f[6].parse().unwrap() };
        m.insert(f[5].to_string(), (is_dir, size));
    }
    m
}

#[test]
fn real_dfvfs_ext2_agrees_with_debugfs() {
    let Some(vhd) = real_image("dfvfs/ext2.vhd") else {
        skip("../shared/fixtures/real is absent");
        return;
    };
    if !have(&["debugfs"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("ext2.raw");
    vhdkit_ok(["convert", "-q", "-O", "raw", s(&vhd), s(&raw)]);
    for d in ["/", "/a_directory"] {
        let want = debugfs_ls(&raw, d);
        assert!(!want.is_empty(), "debugfs listed {d}");
        let out = vhdkit_ok_stdout(&["ls", "--json", &format!("{}:{d}", vhd.display())]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let got: BTreeMap<String, (bool, u64)> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    (e["type"] == "dir", e["size"].as_u64().unwrap()),
                )
            })
            .collect();
        assert_eq!(got, want, "ls {d}");
    }
    let pw = vhdkit_ok_stdout(&["cat", &format!("{}:/passwords.txt", vhd.display())]);
    assert_eq!(
        sha256_hex(&pw),
        "02a2a6af2f1ecf4720d7d49d640f0d0a269a7ec733e41973bdd34f09dad0e252"
    );
}

/// `vhdkit ARGS` fails with status 1, a message containing each of
/// `words`, and no panic.
fn fails_clearly(args: &[&str], words: &[&str]) -> String {
    let err = vhdkit_fails(Some(1), args);
    for w in words {
        assert!(err.contains(w), "{args:?}: {w:?} missing from {err}");
    }
    err
}

/// Overwrite `len` bytes at `at` of `path` with noise.
fn garble(path: &Path, at: u64, len: usize, seed: u64) {
    patch_file(path, at, &random_bytes(len, seed));
}

#[test]
fn damaged_file_systems_fail_clearly() {
    if !have(&[
        "mkfs.ext4",
        "mkfs.fat",
        "mcopy",
        "mkntfs",
        "ntfscp",
        "dumpe2fs",
    ]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src, false);
    let flat = dir.path().join("flat");
    make_tree(&flat, true);
    let ext = dir.path().join("ext4.img");
    make_ext4(&src, &ext);
    let fat = dir.path().join("fat.img");
    make_fat(&src, &fat);
    let ntfs = dir.path().join("ntfs.img");
    make_ntfs(&flat, &ntfs);

    // Truncated partitions: the file systems claim more than there is.
    for (img, name) in [(&ext, "ext4"), (&fat, "fat32"), (&ntfs, "ntfs")] {
        let cut = dir.path().join(format!("cut-{name}"));
        std::fs::copy(img, &cut).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&cut)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        fails_clearly(
            &["ls", "-R", &format!("{}:/", cut.display())],
            &["the disk", name, "truncated"],
        );
    }

    // A garbage superblock (its magic kept, so it is still taken for ext4).
    let bad = dir.path().join("badsb.img");
    std::fs::copy(&ext, &bad).unwrap();
    let magic = file_bytes(&bad, 1024 + 0x38, 2);
    garble(&bad, 1024, 1024, 9);
    patch_file(&bad, 1024 + 0x38, &magic);
    fails_clearly(
        &["ls", &format!("{}:/", bad.display())],
        &["the disk", "ext"],
    );

    // Garbage inode tables: whatever is read, no panic, and it ends.
    let dump = sh(Command::new("dumpe2fs").arg(s(&ext)));
    let block_size: u64 = dump
        .lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let bad = dir.path().join("badinodes.img");
    std::fs::copy(&ext, &bad).unwrap();
    for (i, l) in dump
        .lines()
        .filter(|l| l.contains("Inode table at"))
        .enumerate()
    {
        let range = l.split("Inode table at ").nth(1).unwrap();
        let range = range.split_whitespace().next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
        garble(
            &bad,
            a * block_size,
            ((b - a + 1) * block_size) as usize,
            20 + i as u64,
        );
    }
    for args in [vec!["ls", "-R", "-l"], vec!["extract"], vec!["cat"]] {
        let mut a = args.clone();
        let spec = if args[0] == "cat" {
            format!("{}:/big.bin", bad.display())
        } else {
            format!("{}:/", bad.display())
        };
        a.push(&spec);
        let out_dir = dir.path().join("badout");
        if args[0] == "extract" {
            a.push(s(&out_dir));
        }
        let o = vhdkit(&a);
        let (code, _, err) = code_out_err(&o);
        assert!(code == 0 || code == 1, "{a:?}: {code} {err}");
        if code == 1 {
            assert!(err.contains("the disk"), "{a:?}: {err}");
        }
    }

    // Garbage FAT tables and root directory.
    let bad = dir.path().join("badfat.img");
    std::fs::copy(&fat, &bad).unwrap();
    let boot = file_bytes(&bad, 0, 64);
    let reserved = u64::from(u16::from_le_bytes([boot[14], boot[15]]));
    garble(&bad, reserved * 512, 4 << 20, 31);
    let o = vhdkit(["ls", "-R", &format!("{}:/", bad.display())]);
    let (code, _, err) = code_out_err(&o);
    assert!(
        code == 0 || (code == 1 && err.contains("fat32")),
        "{code} {err}"
    );

    // A directory whose cluster chain loops onto itself, full of deleted
    // entries: the reader would read it forever; its budget ends it.
    let bad = dir.path().join("loopfat.img");
    std::fs::copy(&fat, &bad).unwrap();
    let b = file_bytes(&bad, 0, 512);
    let bps = u64::from(u16::from_le_bytes([b[11], b[12]]));
    let cluster = bps * u64::from(b[13]);
    let reserved = u64::from(u16::from_le_bytes([b[14], b[15]]));
    let fats = u64::from(b[16]);
    let fat_len = u64::from(le32(&b, 36)) * bps;
    let data = reserved * bps + fats * fat_len;
    let root = file_bytes(
        &bad,
        data + (u64::from(le32(&b, 44)) - 2) * cluster,
        cluster as usize,
    );
    let at = (0..root.len())
        .step_by(32)
        .find(|&i| &root[i..i + 11] == b"SUB        ")
        .expect("SUB in the root directory");
    let c = u32::from(u16::from_le_bytes([root[at + 26], root[at + 27]]))
        | u32::from(u16::from_le_bytes([root[at + 20], root[at + 21]])) << 16;
    let mut deleted = vec![0u8; cluster as usize];
    for e in deleted.chunks_mut(32) {
        e[..11].copy_from_slice(b"\xe5DELETED   ");
        e[11] = 0x20;
    }
    patch_file(&bad, data + (u64::from(c) - 2) * cluster, &deleted);
    for k in 0..fats {
        patch_file(
            &bad,
            reserved * bps + k * fat_len + 4 * u64::from(c),
            &c.to_le_bytes(),
        );
    }
    fails_clearly(
        &["ls", &format!("{}:/sub", bad.display())],
        &["fat32", "/sub", "loop"],
    );

    // Garbage MFT.
    let bad = dir.path().join("badmft.img");
    std::fs::copy(&ntfs, &bad).unwrap();
    let boot = file_bytes(&bad, 0, 64);
    let cluster = u64::from(u16::from_le_bytes([boot[11], boot[12]])) * u64::from(boot[13]);
    let mft = u64::from_le_bytes(boot[0x30..0x38].try_into().unwrap()) * cluster;
    garble(&bad, mft + 5 * 1024, 64 << 10, 41);
    let o = vhdkit(["ls", "-R", "-l", &format!("{}:/", bad.display())]);
    let (code, _, err) = code_out_err(&o);
    assert!(
        code == 0 || (code == 1 && err.contains("ntfs")),
        "{code} {err}"
    );

    // No file system at all.
    let zeros = dir.path().join("zeros.img");
    std::fs::File::create(&zeros)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    fails_clearly(
        &["ls", &format!("{}:/", zeros.display())],
        &["no ext2/3/4, NTFS or FAT"],
    );
}

#[test]
fn paths_that_do_not_exist_or_are_not_what_is_asked() {
    if !have(&["mkfs.ext4"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src, false);
    let raw = dir.path().join("ext4.img");
    make_ext4(&src, &raw);
    let r = raw.display();
    fails_clearly(&["ls", &format!("{r}:/nope")], &["/nope", "no such file"]);
    fails_clearly(&["cat", &format!("{r}:/sub")], &["/sub", "is a directory"]);
    fails_clearly(&["ls", &format!("{r}:7:/")], &["no partition \"7\""]);
    fails_clearly(&["ls", "/no/such/image:/"], &["IMAGE[:PART]:/PATH"]);
    // A non-empty destination is refused; nothing is written into it.
    let out = dir.path().join("full");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("mine"), b"x").unwrap();
    fails_clearly(&["extract", &format!("{r}:/"), s(&out)], &["not empty"]);
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    // The image is never written.
    let before = file_sha256(&raw);
    vhdkit_ok_stdout(&["extract", &format!("{r}:/sub"), s(&dir.path().join("sub"))]);
    assert_eq!(file_sha256(&raw), before);
}

/// A disk partitioned with sfdisk (MBR with a logical partition) and
/// sgdisk (GPT with names): PART selects by number and by name, and
/// is required when several partitions hold file systems.
#[test]
fn partitions_are_selected_by_number_or_name() {
    if !have(&["mkfs.ext4", "mkfs.fat", "mcopy", "sfdisk", "sgdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src, false);
    let ext = dir.path().join("ext4.img");
    make_ext4(&src, &ext);
    let fat = dir.path().join("fat.img");
    make_fat(&src, &fat);
    let put = |disk: &Path, img: &Path, at_sector: u64| {
        let data = std::fs::read(img).unwrap();
        patch_file(disk, at_sector * 512, &data);
    };
    // MBR: 1 primary FAT32 (64 MiB at 1 MiB), 5 logical ext4 (32 MiB).
    let mbr = dir.path().join("mbr.img");
    std::fs::File::create(&mbr)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    let layout = "label: dos\nstart=2048, size=131072, type=c\nstart=133120, size=126976, type=5\nstart=135168, size=65536, type=83\n";
    sfdisk(&mbr, layout);
    put(&mbr, &fat, 2048);
    put(&mbr, &ext, 135168);
    let m = mbr.display();
    let err = fails_clearly(
        &["ls", &format!("{m}:/")],
        &["2 partitions hold file systems"],
    );
    assert!(err.contains("1: fat32") && err.contains("5: ext4"), "{err}");
    let want = expected(&src);
    assert_eq!(listed(&format!("{m}:1:/"), &[]), want);
    assert_eq!(listed(&format!("{m}:5:/"), &[]), want);

    // GPT with names.
    let gpt = dir.path().join("gpt.img");
    std::fs::File::create(&gpt)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    run(Command::new("sgdisk").args([
        "-n",
        "1:2048:+64M",
        "-c",
        "1:esp",
        "-t",
        "1:ef00",
        "-n",
        "2:0:+32M",
        "-c",
        "2:root",
        s(&gpt),
    ]));
    let starts = sh(Command::new("sgdisk").args(["-i", "2", s(&gpt)]));
    let first: u64 = starts
        .lines()
        .find_map(|l| l.strip_prefix("First sector: "))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    put(&gpt, &fat, 2048);
    put(&gpt, &ext, first);
    let g = gpt.display();
    assert_eq!(listed(&format!("{g}:root:/"), &[]), want);
    assert_eq!(listed(&format!("{g}:esp:/"), &[]), want);
    assert_eq!(listed(&format!("{g}:2:/"), &[]), want);
}

/// A FAT long name edited to hold `../`: `extract` refuses it and writes
/// nothing outside DEST.
#[test]
fn hostile_names_never_leave_the_destination() {
    if !have(&["mkfs.fat", "mcopy"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("long name evil.txt"), b"evil").unwrap();
    let img = dir.path().join("fat.img");
    make_fat(&src, &img);
    let raw = std::fs::read(&img).unwrap();
    let long: Vec<u8> = "long".encode_utf16().flat_map(u16::to_le_bytes).collect();
    let at = raw
        .windows(long.len())
        .position(|w| w == long.as_slice())
        .expect("the long name's first characters");
    let evil: Vec<u8> = "../x".encode_utf16().flat_map(u16::to_le_bytes).collect();
    patch_file(&img, at as u64, &evil);
    let l = vhdkit_stdout(&["ls", &format!("{}:/", img.display())]);
    assert!(l.contains("../x name evil.txt"), "{l}");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let out = work.join("out");
    fails_clearly(
        &["extract", &format!("{}:/", img.display()), s(&out)],
        &["../x name evil.txt", "stay inside the destination"],
    );
    assert!(!work.join("x name evil.txt").exists());
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 1, "only DEST");
}

/// ext2/3/4 names are any bytes: a name that is not UTF-8 is listed with
/// U+FFFD in place of its bad bytes, is found by that name (`cat`), and is
/// extracted under its stored bytes; two names that list alike are told
/// apart by neither, and say so.
#[test]
fn ext4_names_that_are_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    if !have(&["mkfs.ext4"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    std::fs::write(src.join("d").join(latin1), b"latin-1 name\n").unwrap();
    std::fs::create_dir(src.join(std::ffi::OsStr::from_bytes(b"sub\xff"))).unwrap();
    std::fs::write(src.join(std::ffi::OsStr::from_bytes(b"sub\xff/x")), b"x\n").unwrap();
    // Two names that both list as "twin\u{FFFD}".
    for raw in [&b"twin\xfe"[..], &b"twin\xfd"[..]] {
        std::fs::write(src.join(std::ffi::OsStr::from_bytes(raw)), raw).unwrap();
    }
    let raw = dir.path().join("ext4.img");
    make_ext4(&src, &raw);
    let img = dir.path().join("ext4.vhdx");
    vhdkit_ok(["convert", "-q", "-f", "raw", s(&raw), s(&img)]);
    let listing = listed(&format!("{}:/", img.display()), &[]);
    for name in [
        "d/caf\u{FFFD}.txt",
        "sub\u{FFFD}",
        "sub\u{FFFD}/x",
        "twin\u{FFFD}",
    ] {
        assert!(listing.contains_key(name), "{name:?} in {listing:?}");
    }
    let cat = |p: &str| vhdkit_ok_stdout(&["cat", &format!("{}:{p}", img.display())]);
    assert_eq!(cat("/d/caf\u{FFFD}.txt"), b"latin-1 name\n");
    assert_eq!(cat("/sub\u{FFFD}/x"), b"x\n");
    let err = vhdkit_fails(
        Some(1),
        &["cat", &format!("{}:/twin\u{FFFD}", img.display())],
    );
    assert!(err.contains("cannot tell them apart"), "{err}");
    // Extract keeps the stored bytes of every name.
    let out = dir.path().join("out");
    vhdkit_ok_stdout(&["extract", &format!("{}:/", img.display()), s(&out)]);
    assert_eq!(
        std::fs::read(out.join("d").join(latin1)).unwrap(),
        b"latin-1 name\n"
    );
    assert_eq!(
        std::fs::read(out.join(std::ffi::OsStr::from_bytes(b"sub\xff/x"))).unwrap(),
        b"x\n"
    );
    for raw in [&b"twin\xfe"[..], &b"twin\xfd"[..]] {
        assert_eq!(
            std::fs::read(out.join(std::ffi::OsStr::from_bytes(raw))).unwrap(),
            raw
        );
    }
}

/// A FAT file whose cluster chain ends before its recorded size (damage
/// `fsck.fat` reports) is an error naming the file, never a short file
/// passed off as whole; extract leaves nothing of it.
#[test]
fn a_cluster_chain_shorter_than_the_file_is_an_error() {
    if !have(&["mkfs.fat", "mcopy"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("r.bin"), random_bytes(3_000_000, 9)).unwrap();
    let img = dir.path().join("f.img");
    make_fat(&src, &img);
    let bpb = file_bytes(&img, 0, 512);
    let sector = u64::from(u16::from_le_bytes([bpb[11], bpb[12]]));
    let reserved = u64::from(u16::from_le_bytes([bpb[14], bpb[15]]));
    let fat_sectors = u64::from(le32(&bpb, 0x24));
    // End the chain at cluster 100 in both FATs.
    for k in 0..u64::from(bpb[16]) {
        let at = (reserved + k * fat_sectors) * sector + 4 * 100;
        patch_file(&img, at, &0x0FFF_FFF8u32.to_le_bytes());
    }
    let spec = format!("{}:/r.bin", img.display());
    let err = vhdkit_fails(Some(1), &["cat", &spec]);
    assert!(
        err.contains("/r.bin") && err.contains("before its recorded length of 3000000 bytes"),
        "{err}"
    );
    let out = dir.path().join("out");
    let err = vhdkit_fails(Some(1), &["extract", &spec, s(&out)]);
    assert!(err.contains("before its recorded length"), "{err}");
    assert!(!out.exists(), "nothing extracted");
    assert!(temp_debris(dir.path()).is_empty());
}
