//! Output images are built under a temporary name and renamed into place:
//! without `--force` a file that appeared at the destination meanwhile is
//! never replaced, and a conversion that fails (a full disk) leaves no
//! temporary file and prints only the real error.
#![cfg(unix)]

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::*;
use vhdkit::ErrorKind;
use vhdkit::convert::{self, ImageSpec, OutputOptions};
use vhdkit::report::Format;

/// A destination created by another program after the build started (here:
/// while the image is being filled) is left alone without `overwrite`: an
/// error naming it, and the new image discarded. With `overwrite` it is
/// replaced.
#[test]
fn destination_that_appears_meanwhile_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    for format in [Format::Raw, Format::Vhd, Format::Vhdx] {
        let dst = dir.path().join(format!("dst.{}", format.as_str()));
        let spec = ImageSpec::new(format);
        let e = convert::create_file(&dst, &spec, 4 << 20, OutputOptions::default(), |_| {
            std::fs::write(&dst, b"another program's file").unwrap();
            Ok(())
        })
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(s(&dst)) && msg.contains("created by another program"),
            "{msg}"
        );
        assert_eq!(std::fs::read(&dst).unwrap(), b"another program's file");
        assert!(
            temp_debris(dir.path()).is_empty(),
            "{:?}",
            temp_debris(dir.path())
        );
        // With overwrite the finished image replaces it.
        let out = OutputOptions {
            overwrite: true,
            sync: false,
        };
        convert::create_file(&dst, &spec, 4 << 20, out, |_| {
            std::fs::write(&dst, b"another program's file").unwrap();
            Ok(())
        })
        .unwrap();
        assert_eq!(info_json(&dst)["format"], format.as_str());
        std::fs::remove_file(&dst).unwrap();
    }
}

/// `convert` into a file system that runs out of space (here: a file size
/// limit, which fails writes with EFBIG as a full disk fails them with
/// ENOSPC) fails with the real error naming the destination, and nothing
/// else: no message about closing the dropped image, no temporary file, no
/// destination.
#[test]
fn failed_convert_prints_only_the_real_error() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    write_raw(&src, &random_bytes(24 << 20, 5));
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let key = &test_key().1;
    for (name, extra) in [
        ("dst.vhdx", vec![]),
        ("dst.vhd", vec![]),
        ("dst.evhd", vec!["--recipient", s(key)]),
    ] {
        let dst = out_dir.join(name);
        let mut cmd = Command::new(vhdkit_bin());
        cmd.args(["convert", "-q"])
            .args(&extra)
            .args([s(&src), s(&dst)])
            .stdin(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 8 << 20,
                    rlim_max: 8 << 20,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        let (code, _, err) = code_out_err(&out);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains(s(&dst)), "{name}: {err}");
        assert!(
            !err.contains("dropped") && !err.contains("warning"),
            "{name}: a second message beside the real error: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(!dst.exists(), "{name}");
        assert!(
            temp_debris(&out_dir).is_empty(),
            "{name}: {:?}",
            temp_debris(&out_dir)
        );
    }
}

/// A DST that ends in `/` or names a folder is refused before anything is
/// converted: no temporary file, nothing created, the error names DST.
#[test]
fn destination_folder_is_refused_up_front() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src.raw");
    write_raw(&src, &random_bytes(1 << 20, 3));
    let slash = format!("{}/x.vhd/", d.path().display());
    let folder = d.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    for dst in [slash.as_str(), s(&folder)] {
        for cmd in [
            vec!["convert", "-O", "vhd", s(&src), dst],
            vec!["convert", "--force", "-O", "vhd", s(&src), dst],
            vec!["create", "-f", "vhd", dst, "1M"],
        ] {
            let (code, _, err) = code_out_err(&vhdkit(&cmd));
            assert_eq!(code, 1, "{cmd:?}: {err}");
            assert!(
                err.contains("names a folder") || err.contains("is a directory"),
                "{cmd:?}: {err}"
            );
            assert!(!err.contains("rename"), "{cmd:?}: {err}");
        }
    }
    assert!(!d.path().join("x.vhd").exists());
    assert!(
        temp_debris(d.path()).is_empty(),
        "{:?}",
        temp_debris(d.path())
    );
    assert!(temp_debris(&folder).is_empty());
}
