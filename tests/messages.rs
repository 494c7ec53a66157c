//! Messages a person reads (issue 12 point 8): errors name the files people
//! gave, hints name options that exist, ranges are written one way, and
//! every argument of every command has help text.

mod common;

use std::path::PathBuf;

use common::*;

/// Arguments and options of a `--help` text that have no help: an entry
/// line (`<ARG>`, `-x` or `--long`) with no text after it
/// on its line nor an indented continuation on the next one.
fn undocumented(help: &str) -> Vec<String> {
    let lines: Vec<&str> = help.lines().collect();
    let mut in_list = false;
    let mut missing = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.ends_with(':') && !line.starts_with(' ') {
            in_list = matches!(*line, "Arguments:" | "Options:");
            continue;
        }
        // Entries are indented by 2 spaces, or 6 for a long option
        // without a short one; help on lines of their own by 10.
        let indent = line.len() - line.trim_start().len();
        let entry = line.trim_start();
        if !in_list
            || !(indent == 2 || indent == 6)
            || !(entry.starts_with('<') || entry.starts_with('-') || entry.starts_with('['))
        {
            continue;
        }
        // The entry's name ends at the first run of two spaces.
        let same_line = entry
            .split_once("  ")
            .is_some_and(|(_, rest)| !rest.trim().is_empty());
        let next_line = lines
            .get(i + 1)
            .is_some_and(|n| n.starts_with("          ") && !n.trim().is_empty());
        if !same_line && !next_line {
            missing.push(entry.trim().to_string());
        }
    }
    missing
}

/// The subcommands a `--help` text lists under "Commands:" (not `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// Every command path (e.g. `["recipients", "remove"]`) of the CLI.
fn command_paths() -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut todo = vec![Vec::<String>::new()];
    while let Some(path) = todo.pop() {
        let mut args = path.clone();
        args.push("--help".into());
        let help = String::from_utf8(vhdkit_ok(&args)).unwrap();
        for sub in subcommands(&help) {
            let mut p = path.clone();
            p.push(sub);
            todo.push(p);
        }
        out.push(path);
    }
    out
}

/// Every argument and option of every subcommand has help text.
#[test]
fn every_argument_has_help() {
    let paths = command_paths();
    // The walk found the commands (so the check cannot pass vacuously).
    for want in [
        &["convert"][..],
        &["recipients", "remove"],
        &["key", "show"],
    ] {
        assert!(
            paths.iter().any(|p| p == want),
            "{want:?} not among {paths:?}"
        );
    }
    let mut missing = Vec::new();
    for path in &paths {
        for flag in ["--help", "-h"] {
            let mut args = path.clone();
            args.push(flag.into());
            let help = String::from_utf8(vhdkit_ok(&args)).unwrap();
            for m in undocumented(&help) {
                missing.push(format!("vhdkit {} {flag}: {m}", path.join(" ")));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "arguments without help:\n{}",
        missing.join("\n")
    );
}

/// The parser of help texts finds an entry without help, on its own line
/// or followed by another entry, and accepts help on the next line.
#[test]
fn undocumented_finds_entries_without_help() {
    let help = "Arguments:\n  <IMAGE>  \n  <SIZE>  The size\n\nOptions:\n      --key <KEY>\n      --long <X>\n          Help on the next line\n  -h, --help  Print help\n";
    assert_eq!(undocumented(help), ["<IMAGE>", "--key <KEY>"]);
}

/// An error creating an output names DST, never the hidden temporary file
/// it is written through, and says when DST's directory does not exist or
/// is not a directory.
#[test]
fn output_errors_name_dst_and_its_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src.vhdx");
    vhdkit_ok(["create", s(&src), "16M"]);
    let (key, _) = keypair(d, "k");
    let file = d.join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    for (parent, why) in [
        (d.join("missing/dir"), "does not exist"),
        (file.clone(), "is not a directory"),
    ] {
        let cases: Vec<(PathBuf, Vec<String>)> = vec![
            (
                parent.join("dst.vhd"),
                vec!["convert".into(), "-q".into(), s(&src).into()],
            ),
            (parent.join("new.vhdx"), vec!["create".into()]),
            (
                parent.join("k.xml"),
                vec!["keygen".into(), "--bits".into(), "2048".into(), "-o".into()],
            ),
            (
                parent.join("k.pub.xml"),
                vec!["key".into(), "public".into(), s(&key).into(), "-o".into()],
            ),
        ];
        for (dst, mut args) in cases {
            args.push(s(&dst).into());
            if args[0] == "create" {
                args.push("16M".into());
            }
            let err = vhdkit_fails(
                Some(1),
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
            );
            assert!(err.contains(s(&dst)), "{args:?}: {err}");
            assert!(
                err.contains(&format!("the directory {} {why}", parent.display())),
                "{args:?}: {err}"
            );
            assert!(
                !err.contains(".vhdkit-") && !err.contains("--force"),
                "{args:?}: {err}"
            );
        }
    }
}

/// A format that cannot be told from DST's extension is asked for with the
/// option the command has: `-O/--output-format` for convert (whose `-f`
/// is the format of SRC), `-f/--format` for create.
#[test]
fn unknown_extension_hints_at_the_commands_own_option() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.vhdx");
    vhdkit_ok(["create", s(&src), "16M"]);
    let dst = dir.path().join("dst.image");
    let err = vhdkit_fails(Some(1), &["convert", "-q", s(&src), s(&dst)]);
    assert!(
        err.contains("pass -O/--output-format") && !err.contains("-f/"),
        "{err}"
    );
    // The hint works.
    vhdkit_ok(["convert", "-q", "-O", "vhd", s(&src), s(&dst)]);
    let new = dir.path().join("new.image");
    let err = vhdkit_fails(Some(1), &["create", s(&new), "16M"]);
    assert!(
        err.contains("pass -f/--format") && !err.contains("-O/"),
        "{err}"
    );
    vhdkit_ok(["create", "-f", "vhdx", s(&new), "16M"]);
}

/// `read` checks the range it was asked for (the length too) and reports it
/// as given; range errors write offsets, lengths and sizes in hexadecimal
/// only and name the image.
#[test]
fn range_errors_report_the_range_in_one_style() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x.vhdx");
    vhdkit_ok(["create", s(&x), "16M"]);
    let vhd = dir.path().join("x.vhd");
    vhdkit_ok(["create", s(&vhd), "16M"]);
    for img in [&x, &vhd] {
        for (cmd, offset, length, range) in [
            ("read", "20M", "1", "range 0x1400000+0x1 "),
            ("read", "15M", "2M", "range 0xf00000+0x200000 "),
            ("read", "16M", "1", "range 0x1000000+0x1 "),
            ("read", "17M", "0", "range 0x1100000+0x0 "),
            ("write", "16M", "1", "range 0x1000000+0x1 "),
            ("write", "0xfff000", "8K", "range 0xfff000+0x2000 "),
        ] {
            let mut args = vec![cmd, s(img), "--offset", offset, "--length", length];
            if cmd == "write" {
                args.extend(["--pattern", "1"]);
            }
            let err = vhdkit_fails(Some(1), &args);
            assert!(err.contains(s(img)), "{args:?}: {err}");
            assert!(err.contains(range), "{args:?}: {err}");
            assert!(
                err.contains("virtual disk of 0x1000000 bytes (16 MiB)"),
                "{args:?}: {err}"
            );
            // No decimal number of bytes beside the hexadecimal ones.
            assert!(
                !err.contains("16777216") && !err.contains("20971520"),
                "{err}"
            );
        }
    }
    // A range inside the disk reads.
    let out = vhdkit_ok_stdout(&["read", s(&x), "--offset", "15M", "--length", "1M"]);
    assert_eq!(out.len(), 1 << 20);
}

/// The first `0x...` number after `prefix` in `text`.
fn hex_after(text: &str, prefix: &str) -> Option<u64> {
    let at = text.find(prefix)? + prefix.len();
    let rest = text[at..].trim_start().strip_prefix("0x")?;
    let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    u64::from_str_radix(&hex, 16).ok()
}

/// `info` and `check` name the same file offset for the same damage: a bad
/// checksum in a VHD's footer, its copy at offset 0, and its dynamic header.
#[test]
fn info_and_check_give_the_same_offset_for_a_finding() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.vhd");
    vhdkit_ok(["create", s(&good), "16M"]);
    vhdkit_ok([
        "write",
        s(&good),
        "--offset",
        "0",
        "--pattern",
        "7",
        "--length",
        "4096",
    ]);
    let len = std::fs::metadata(&good).unwrap().len();
    let footer = len - 512;
    // The dynamic header's offset, from the footer's data offset field.
    let hoff = u64::from_be_bytes(file_bytes(&good, footer + 16, 8).try_into().unwrap());
    for (name, at, structure, want) in [
        ("footer", footer + 64, "VHD footer at", footer),
        ("footer copy", 64, "VHD footer copy at", 0),
        ("dynamic header", hoff + 36, "VHD dynamic header at", hoff),
    ] {
        let bad = dir.path().join(format!("{}.vhd", name.replace(' ', "-")));
        std::fs::copy(&good, &bad).unwrap();
        patch_file(&bad, at, &[0xde, 0xad]);
        let info = String::from_utf8(vhdkit_ok(["info", s(&bad)])).unwrap();
        let check = vhdkit(["check", s(&bad)]);
        let (_, check, _) = code_out_err(&check);
        let from_info = hex_after(&info, structure);
        let from_check = hex_after(&check, structure);
        assert_eq!(from_info, Some(want), "{name}: info says:\n{info}");
        assert_eq!(from_check, Some(want), "{name}: check says:\n{check}");
        assert!(info.contains("bad checksum") && check.contains("bad checksum"));
    }
}

/// A differencing image takes its parent's size: `create --parent P C SIZE`
/// refuses a SIZE that differs (naming both), accepts the parent's own.
#[test]
fn differencing_create_refuses_a_size_that_is_not_the_parents() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.vhdx");
    vhdkit_ok(["create", s(&p), "16M"]);
    let c = dir.path().join("c.vhdx");
    for args in [
        vec![
            "create",
            "-t",
            "differencing",
            "--parent",
            s(&p),
            s(&c),
            "1G",
        ],
        vec!["create", "--parent", s(&p), s(&c), "32M"],
    ] {
        let err = vhdkit_fails(Some(1), &args);
        assert!(
            err.contains(s(&c)) && err.contains(s(&p)) && err.contains("16 MiB"),
            "{err}"
        );
        assert!(err.contains("size of its parent"), "{err}");
        assert!(!c.exists());
    }
    vhdkit_ok(["create", "--parent", s(&p), s(&c), "16M"]);
    assert_eq!(info_json(&c)["virtual_size"], 16 << 20);
    std::fs::remove_file(&c).unwrap();
    vhdkit_ok(["create", "--parent", s(&p), s(&c)]);
    assert_eq!(info_json(&c)["virtual_size"], 16 << 20);
}

/// A parent path that names a FIFO (or a directory) is reported as what it
/// is, not as "not found", and opening it never blocks.
#[test]
fn a_parent_that_is_a_fifo_is_named_for_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.vhd");
    let c = dir.path().join("c.vhd");
    vhdkit_ok(["create", "-t", "dynamic", s(&p), "4M"]);
    vhdkit_ok(["create", "--parent", s(&p), s(&c)]);
    std::fs::remove_file(&p).unwrap();
    let made = std::process::Command::new("mkfifo").arg(&p).status();
    if !made.is_ok_and(|st| st.success()) {
        return skip("mkfifo is not available");
    }
    let err = vhdkit_fails(Some(1), &["info", s(&c)]);
    assert!(err.contains("FIFO") && err.contains(s(&p)), "{err}");
    assert!(!err.contains("not found"), "{err}");
}

/// Sizes are digits with an optional fraction and unit: `1e3`, `+5` and
/// `inf`, which Rust's number parsers take, are refused.
#[test]
fn sizes_in_scientific_notation_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.vhd");
    vhdkit_ok(["create", s(&img), "1M"]);
    for bad in ["1e3", "+5", "inf"] {
        let err = vhdkit_fails(
            Some(1),
            &["read", s(&img), "--offset", bad, "--length", "1"],
        );
        assert!(err.contains("cannot parse size"), "{bad}: {err}");
    }
}

/// `10GB` is 10 GiB, as in qemu-img, and the command says so on stderr;
/// `10G` and `10GiB` say nothing.
#[test]
fn decimal_looking_units_are_read_as_binary_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    for (size, noted) in [
        ("10GB", true),
        ("10gb", true),
        ("10G", false),
        ("10GiB", false),
    ] {
        let img = dir.path().join(format!("{size}.vhdx"));
        let out = vhdkit(["create", s(&img), size]);
        let (code, _, err) = code_out_err(&out);
        assert_eq!(code, 0, "{err}");
        assert_eq!(info_json(&img)["virtual_size"], 10u64 << 30, "{size}");
        if noted {
            assert!(
                err.contains("note:") && err.contains("10GiB") && err.contains("10737418240"),
                "{size}: {err}"
            );
        } else {
            assert!(err.is_empty(), "{size}: {err}");
        }
    }
    // Offsets too.
    let img = dir.path().join("10G.vhdx");
    let out = vhdkit(["read", s(&img), "--offset", "1MB", "--length", "1"]);
    let (code, stdout, err) = code_out_err(&out);
    assert_eq!((code, stdout.len()), (0, 1), "{err}");
    assert!(err.contains("1MiB = 1048576 bytes"), "{err}");
}

/// `recipients remove IMAGE FPR` (the form people type) removes by
/// fingerprint prefix or key file; `--fingerprint` still works.
#[test]
fn recipients_remove_takes_the_fingerprint_positionally() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, _) = keypair(d, "a");
    let (b, b_pub) = keypair(d, "b");
    let (c, _) = keypair(d, "c");
    let raw = d.join("src.raw");
    write_raw(&raw, &mixed_content(1 << 20, 5));
    let e = d.join("e.evhd");
    vhdkit_ok([
        "convert",
        "-q",
        "-O",
        "evhd",
        "--recipient",
        s(&a),
        "--recipient",
        s(&b),
        "--recipient",
        s(&c),
        s(&raw),
        s(&e),
    ]);
    let fpr = |k: &std::path::Path| {
        key_show_json(k)["fingerprint"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let listed = || String::from_utf8(vhdkit_ok(["recipients", "list", s(&e)])).unwrap();
    // By fingerprint prefix, positionally.
    let fb = fpr(&b);
    vhdkit_ok(["recipients", "remove", s(&e), &fb[..16], "--key", s(&a)]);
    assert!(!listed().contains(&fb), "{}", listed());
    // Re-added, then removed by its key file, positionally.
    vhdkit_ok([
        "recipients",
        "add",
        s(&e),
        "--key",
        s(&a),
        "--recipient",
        s(&b_pub),
    ]);
    assert!(listed().contains(&fb));
    vhdkit_ok(["recipients", "remove", s(&e), s(&b_pub), "--key", s(&a)]);
    assert!(!listed().contains(&fb));
    // The option form still works; both forms at once are refused.
    let fc = fpr(&c);
    let err = vhdkit_fails(
        Some(1),
        &[
            "recipients",
            "remove",
            s(&e),
            &fc,
            "--fingerprint",
            &fc,
            "--key",
            s(&a),
        ],
    );
    assert!(err.contains("cannot be used with"), "{err}");
    // Neither a key file nor hex digits, or nothing at all: said so.
    let missing = d.join("nothere.xml");
    let err = vhdkit_fails(
        Some(1),
        &["recipients", "remove", s(&e), s(&missing), "--key", s(&a)],
    );
    assert!(
        err.contains("is neither a key file nor a fingerprint"),
        "{err}"
    );
    let err = vhdkit_fails(Some(1), &["recipients", "remove", s(&e), "--key", s(&a)]);
    assert!(err.contains("give the recipient to remove: FPR"), "{err}");
    assert!(listed().contains(&fc));
    vhdkit_ok([
        "recipients",
        "remove",
        s(&e),
        "--fingerprint",
        &fc,
        "--key",
        s(&a),
    ]);
    assert!(!listed().contains(&fc));
    assert!(listed().contains(&fpr(&a)));
}

/// Runs only inside [`skips_are_visible_to_a_person_running_cargo_test`].
#[test]
fn skip_probe() {
    if std::env::var_os("VHDKIT_SKIP_PROBE").is_some() {
        assert!(shared_dir().is_none());
    }
}

/// A test that skips says so where `cargo test` shows it although the test
/// passes (libtest hides a passing test's captured output), and the binary
/// ends with a count.
#[test]
fn skips_are_visible_to_a_person_running_cargo_test() {
    // The probe's skip is logged here, not among the run's real skips.
    let logs = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("VHDKIT_SKIP_LOG_DIR", logs.path())
        .args(["--exact", "skip_probe", "--test-threads", "1"])
        .env("VHDKIT_SKIP_PROBE", "1")
        .env("VHDKIT_SHARED", "/nonexistent/shared")
        .env_remove("CI")
        .output()
        .unwrap();
    let (code, stdout, stderr) = code_out_err(&out);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("test skip_probe ... ok"), "{stdout}");
    assert!(
        stderr.contains("SKIPPED skip_probe: /nonexistent/shared/fixtures/real is absent"),
        "{stderr}"
    );
    assert!(
        stderr
            .trim_end()
            .ends_with("SKIPPED: 1 test(s) of this binary skipped (their SKIPPED lines say why)"),
        "{stderr}"
    );
    let logged: Vec<String> = std::fs::read_dir(logs.path())
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(
        logged,
        ["SKIPPED skip_probe: /nonexistent/shared/fixtures/real is absent\n"]
    );
}
