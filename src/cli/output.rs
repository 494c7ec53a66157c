//! Printing: reports as JSON or text on stdout, the progress bar, and
//! what a salvaging command read as zeros.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};

use vhdkit::Error;

use super::fail1;

/// Exit status of `convert`, `read` and `compare` when `--salvage` read
/// ranges as zeros.
pub const EXIT_SALVAGED: u8 = 3;

/// Print a report to stdout as JSON or as text for people.
pub fn emit<T: serde::Serialize + ?Sized>(
    json: bool,
    value: &T,
    text: fn(&T, &mut dyn Write) -> std::io::Result<()>,
) -> Result<(), (Error, u8)> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, value).map_err(json_err)?;
        writeln!(out).map_err(stdout_err)
    } else {
        text(value, &mut out).map_err(stdout_err)
    }
}

/// Exit status when the reader of standard output went away before all of
/// it was written (`vhdkit convert X - | head -c 10`): 128 + SIGPIPE, the
/// status a shell reports for `cat` and other tools that SIGPIPE ends, so
/// that a cut-short stream never looks like success. No message is printed:
/// the reader stopped on purpose, as far as vhdkit can tell.
pub const EXIT_BROKEN_PIPE: u8 = 128 + 13;

/// Whether `e` is the reader of our output having stopped reading
/// (`vhdkit ... | head`): such a run exits with [`EXIT_BROKEN_PIPE`] and
/// no message, wherever the write failed (a stream, a report, a listing).
pub fn is_broken_pipe(e: &Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

/// A failure to print JSON: a reader gone away is a broken pipe like any
/// other write to stdout (see [`is_broken_pipe`]).
pub fn json_err(e: serde_json::Error) -> (Error, u8) {
    match e.io_error_kind() {
        Some(kind) => stdout_err(std::io::Error::from(kind)),
        None => fail1(Error::invalid_argument(format!("cannot print JSON: {e}"))),
    }
}

/// A failure to write to stdout.
pub fn stdout_err(e: std::io::Error) -> (Error, u8) {
    fail1(Error::io(e, "writing to standard output"))
}

/// A progress bar on stderr, unless `quiet` or stderr is no terminal.
pub fn progress_bar(total: u64, quiet: bool) -> Option<ProgressBar> {
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    Some(bar)
}

/// List what a salvaging command read as zeros on stderr, and give the
/// exit status: `code`, or [`EXIT_SALVAGED`] when anything was salvaged.
pub fn report_salvage(log: Option<&vhdkit::damage::SalvageLog>, code: u8) -> u8 {
    let Some(log) = log else {
        return code;
    };
    let runs = log.runs();
    for r in &runs {
        eprintln!("vhdkit: salvaged: {r} (read as zeros)");
    }
    if runs.is_empty() { code } else { EXIT_SALVAGED }
}
