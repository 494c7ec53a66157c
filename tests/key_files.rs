//! Key files written by `keygen`, `key public` and `key export-pem`: a new
//! file every time (0600 for private keys, 0644 for public ones, whatever
//! the file it replaces had), never written through a symbolic link, and no
//! temporary file left behind when writing fails.
#![cfg(unix)]

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use common::*;

/// A file holding `text` with mode 0644.
fn world_readable(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(mode(p), "644");
}

/// `key show --json` kind of `p` ("private" or "public").
fn kind(p: &Path) -> String {
    key_show_json(p)["kind"].as_str().unwrap().to_string()
}

/// The commands that write a key file, each as (args before `-o`, whether
/// the output is private). `key` is an existing private key.
fn writers(key: &Path) -> Vec<(Vec<PathBuf>, bool)> {
    let p = |s: &str| PathBuf::from(s);
    vec![
        (vec![p("keygen"), p("--bits"), p("2048")], true),
        (vec![p("key"), p("export-pem"), key.to_path_buf()], true),
        (vec![p("key"), p("public"), key.to_path_buf()], false),
        (
            vec![p("key"), p("export-pem"), p("--public"), key.to_path_buf()],
            false,
        ),
    ]
}

fn run_writer(args: &[PathBuf], out: &Path, force: bool) -> std::process::Output {
    let mut all: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    all.push(OsStr::new("-o"));
    all.push(os(out));
    if force {
        all.push(OsStr::new("--force"));
    }
    vhdkit(all)
}

/// `--force` over an existing 0644 file: a private key ends up 0600, a
/// public one 0644, and the content is the new key.
#[test]
fn force_replaces_the_file_and_its_mode() {
    let key = &test_key().1;
    let dir = tempfile::tempdir().unwrap();
    for (i, (args, private)) in writers(key).into_iter().enumerate() {
        let out = dir.path().join(format!("out{i}"));
        world_readable(&out, "old content");
        let o = run_writer(&args, &out, true);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let want = if private { "600" } else { "644" };
        assert_eq!(mode(&out), want, "{args:?} over a 0644 file");
        assert_eq!(kind(&out), if private { "private" } else { "public" });

        // A public key over a 0600 file is 0644 as well: the mode is the
        // key's, not the old file's.
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o600)).unwrap();
        let o = run_writer(&args, &out, true);
        assert!(o.status.success());
        assert_eq!(mode(&out), want, "{args:?} over a 0600 file");
    }
    assert!(
        temp_debris(dir.path()).is_empty(),
        "{:?}",
        temp_debris(dir.path())
    );
}

/// Without `--force` an existing file is an error and stays as it was.
#[test]
fn existing_file_needs_force() {
    let key = &test_key().1;
    let dir = tempfile::tempdir().unwrap();
    for (args, _) in writers(key) {
        let out = dir.path().join("exists");
        world_readable(&out, "old content");
        let o = run_writer(&args, &out, false);
        let (code, _, err) = code_out_err(&o);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("--force") && err.contains("exists"), "{err}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "old content");
        assert_eq!(mode(&out), "644");
    }
    assert!(
        temp_debris(dir.path()).is_empty(),
        "{:?}",
        temp_debris(dir.path())
    );
}

/// A symbolic link as the output is refused with or without `--force`;
/// the link, the file it points to, and a dangling link's missing target
/// all stay as they were.
#[test]
fn symlink_output_is_refused() {
    let key = &test_key().1;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target.txt");
    world_readable(&target, "precious");
    let link = dir.path().join("link.xml");
    symlink(&target, &link).unwrap();
    let missing = dir.path().join("missing.xml");
    let dangling = dir.path().join("dangling.xml");
    symlink(&missing, &dangling).unwrap();
    for (args, _) in writers(key) {
        for force in [false, true] {
            for l in [&link, &dangling] {
                let o = run_writer(&args, l, force);
                let (code, _, err) = code_out_err(&o);
                assert_eq!(code, 1, "{args:?} force={force}: {err}");
                assert!(
                    err.contains("symbolic link") && err.contains(&*l.to_string_lossy()),
                    "{args:?}: {err}"
                );
            }
            assert_eq!(std::fs::read_link(&link).unwrap(), target);
            assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
            assert_eq!(mode(&target), "644");
            assert_eq!(std::fs::read_link(&dangling).unwrap(), missing);
            assert!(
                !missing.exists(),
                "{args:?} created the dangling link's target"
            );
        }
    }
    assert!(
        temp_debris(dir.path()).is_empty(),
        "{:?}",
        temp_debris(dir.path())
    );
}

/// A write that fails after the temporary file was made (the output is a
/// directory: rename cannot replace it) leaves no temporary file behind and
/// the directory as it was.
#[test]
fn failure_leaves_no_temporary_file() {
    let key = &test_key().1;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a-directory");
    std::fs::create_dir(&out).unwrap();
    for (args, _) in writers(key) {
        let o = run_writer(&args, &out, true);
        let (code, _, err) = code_out_err(&o);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("a-directory"), "{err}");
        assert!(out.is_dir());
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
        assert!(
            temp_debris(dir.path()).is_empty(),
            "{args:?}: {:?}",
            temp_debris(dir.path())
        );
    }
}

/// `key public` and `key export-pem` refuse to write over their own input,
/// by its path or another name of the same file (a hard link), even with
/// `--force`: the private key must not be replaced by its public half.
#[test]
fn output_over_the_input_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("A.xml");
    std::fs::copy(&test_key().1, &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.path().join("A-link.xml");
    std::fs::hard_link(&key, &link).unwrap();
    let before = std::fs::read(&key).unwrap();
    let p = |s: &str| PathBuf::from(s);
    for args in [
        vec![p("key"), p("public"), key.clone()],
        vec![p("key"), p("export-pem"), key.clone()],
        vec![p("key"), p("export-pem"), p("--public"), key.clone()],
    ] {
        for out in [&key, &link] {
            let o = run_writer(&args, out, true);
            let (code, _, err) = code_out_err(&o);
            assert_eq!(code, 1, "{args:?} -o {}: {err}", out.display());
            assert!(err.contains("is also an input"), "{err}");
            assert_eq!(std::fs::read(&key).unwrap(), before, "{args:?}");
            assert_eq!(kind(&key), "private");
        }
    }
    assert!(temp_debris(dir.path()).is_empty());
}
