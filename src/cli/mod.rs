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
mod merge;
mod open;
mod output;
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
    match e.hint().and_then(option_note) {
        Some(note) => e.with_note(note),
        None => e,
    }
}

/// The library's hint `h` said in terms of this tool's options, as a note
/// to append to a message; `None` for a hint only some commands say.
fn option_note(h: Hint) -> Option<&'static str> {
    Some(match h {
        Hint::IgnoreParentId => " (override with --ignore-parent-id to read it anyway)",
        Hint::ReplaceOutput => " (pass --force to replace it)",
        Hint::ReplaceKeyFile => " (--force replaces it)",
        Hint::RequireSigned => " (--require-signed)",
        Hint::RequireSignedNeedsEvhd => "; --require-signed accepts only signed EVHD images",
        Hint::Recipient => " (--recipient)",
        Hint::RecipientKey => " with --key",
        Hint::ReadAsRaw => " (a raw image: -f raw)",
        Hint::OpenAsRaw => " with -f raw",
        Hint::Repair => "; repair it with `vhdkit check --repair` before writing",
        Hint::Key => " (pass one with --key)",
        Hint::AcceptOlderState => {
            ": inspect it (`vhdkit check`), then `vhdkit sign IMAGE --key KEY` accepts the state it opens to"
        }
        Hint::Vouch => {
            "; check its content, then `vhdkit sign IMAGE --key KEY` vouches for it (or give its signer's public key with --trust)"
        }
        Hint::Rekey => "; run `vhdkit rekey`",
        Hint::Salvage => {
            " (`vhdkit check` lists all the damage; --salvage reads missing bytes as zeros)"
        }
        Hint::MaybeRaw => "; if this is a raw disk, -f raw reads it as one",
        Hint::WriteOntoDevice => "; use --device to write the image's content onto it",
        Hint::WriteThroughLink => {
            ", or use --device to write the image's content into what it points to"
        }
        Hint::StreamToStdout => {
            "; DST `-` streams the raw content to standard output, which can be redirected into it"
        }
        Hint::CreateImageFile => " (leave out --device to create an image file)",
        // ForceShare is said only by the commands that take -U
        // (`force_share_hint`).
        _ => return None,
    })
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
        Command::Merge(a) => merge::merge(a),
    }
}
