//! Messages a person reads (issue 12 point 8): errors name the files people
//! gave, hints name options that exist, ranges are written one way, and
//! every argument of every command has help text.

mod common;

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
