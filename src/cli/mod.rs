//! The `vhdkit` command: parses arguments, calls the library and prints.
//! Every rule about formats, conversions and key files lives in the
//! library; this module only decides what to print and how to exit.

mod args;
mod data;
mod device;
mod evhd;
mod image;
mod inspect;
mod keys;
mod open;
mod output;
mod resize;
mod signals;
mod transform;

use std::process::ExitCode;

use clap::Parser;

use vhdkit::{Error, Hint};

use args::{Cli, Command};

/// What a command ends with: its exit status, or an error to print and
/// the status to exit with.
type Outcome = Result<u8, (Error, u8)>;

/// Errors of ordinary commands exit 1.
fn fail1(e: Error) -> (Error, u8) {
    (e, 1)
}

/// Run the command line of this process.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_exit(&e),
    };
    signals::remove_temp_files_on_signals();
    match run(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err((e, _)) if output::is_broken_pipe(&e) => ExitCode::from(output::EXIT_BROKEN_PIPE),
        Err((e, code)) => {
            eprintln!("vhdkit: error: {}", with_option_hint(e));
            ExitCode::from(code)
        }
    }
}

/// `e` with the library's hint said in terms of this tool's options.
fn with_option_hint(e: Error) -> Error {
    let note = match e.hint() {
        Some(Hint::IgnoreParentId) => " (override with --ignore-parent-id to read it anyway)",
        Some(Hint::ReplaceOutput) => " (pass --force to replace it)",
        Some(Hint::ReplaceKeyFile) => " (--force replaces it)",
        Some(Hint::RequireSigned) => " (--require-signed)",
        Some(Hint::RequireSignedNeedsEvhd) => "; --require-signed accepts only signed EVHD images",
        Some(Hint::Recipient) => " (--recipient)",
        Some(Hint::RecipientKey) => " with --key",
        Some(Hint::ReadAsRaw) => " (a raw image: -f raw)",
        Some(Hint::OpenAsRaw) => " with -f raw",
        Some(Hint::Repair) => "; repair it with `vhdkit check --repair` before writing",
        // ForceShare is said only by the commands that take -U
        // (`force_share_hint`).
        _ => return e,
    };
    e.with_note(note)
}

/// Print clap's message for a command line it refused (or for `--help`
/// and `--version`, which exit 0). Usage errors, key files that cannot be
/// used included (they are read while parsing), exit 1, like every error
/// of a command; `compare` exits 2, its status for an error.
fn usage_exit(e: &clap::Error) -> ExitCode {
    let _ = e.print();
    if !e.use_stderr() {
        return ExitCode::SUCCESS;
    }
    let verb = std::env::args_os()
        .skip(1)
        .find(|a| !a.to_string_lossy().starts_with('-'));
    ExitCode::from(if verb.is_some_and(|v| v == "compare") {
        2
    } else {
        1
    })
}

fn run(cmd: Command) -> Outcome {
    match cmd {
        Command::Info {
            json,
            image,
            parent,
        } => inspect::info(json, &image, &parent),
        Command::Check {
            json,
            repair,
            image,
            parent,
        } => inspect::check(json, repair, &image, &parent),
        Command::Map {
            json,
            image,
            parent,
        } => inspect::map(json, &image, &parent),
        Command::Create(a) => image::create(a),
        Command::Convert(a) => transform::convert(a),
        Command::Compare {
            a,
            b,
            parent,
            salvage,
        } => data::compare(&a, &b, &parent, &salvage),
        Command::Read {
            image,
            offset,
            length,
            parent,
            salvage,
        } => data::read(&image, &offset, &length, &parent, &salvage),
        Command::Write(a) => data::write(a),
        Command::Resize(a) => resize::resize(a),
        Command::Keygen {
            bits,
            output,
            force,
            json,
        } => keys::keygen(bits, &output, force, json),
        Command::Key { cmd } => keys::run(cmd),
        Command::Recipients { cmd } => evhd::recipients(cmd),
        Command::Sign { image, key } => evhd::sign(&image, key),
        Command::Rekey {
            image,
            key,
            trust,
            quiet,
        } => evhd::rekey(&image, key, trust, quiet),
    }
}
