//! The `vhdkit` command: parses arguments, calls the library and prints.
//! Every rule about formats, conversions and key files lives in the
//! library; this module only decides what to print and how to exit.

mod args;
mod compact;
mod data;
mod device;
mod evhd;
mod fs;
mod image;
mod inspect;
mod keys;
mod lifecycle;
mod merge;
mod open;
mod output;
mod partitions;
mod resize;
mod serve;
mod signals;
mod transform;

use std::process::ExitCode;

use clap::Parser;

use vhdkit::report::{FindingKind, FormatDetails, Warning, WarningKind};
use vhdkit::{CheckReport, Error, Hint, ImageInfo};

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
    // `serve` stops on signals its own way (flush, exit 0).
    if !matches!(cli.command, Command::Serve(_)) {
        signals::remove_temp_files_on_signals();
    }
    if let Some((image, verb)) = changes_in_place(&cli.command) {
        vhdkit::unstable::pending::changing_in_place(image, verb);
    }
    match run(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err((e, _)) if output::is_broken_pipe(&e) => ExitCode::from(output::EXIT_BROKEN_PIPE),
        Err((e, code)) => {
            eprintln!("vhdkit: error: {}", with_option_hint(e));
            ExitCode::from(code)
        }
    }
}

/// The image a crash-safe command changes in place, and what it does to
/// it, for the message an interrupt prints.
fn changes_in_place(c: &Command) -> Option<(&std::path::Path, &'static str)> {
    Some(match c {
        Command::Resize(a) => (&a.image, "resizing"),
        Command::Compact(a) => (&a.image, "compacting"),
        Command::Merge(a) => (&a.child, "merging"),
        Command::SetParent { child, .. } => (child, "setting the parent of"),
        Command::Rebase { child, .. } => (child, "rebasing"),
        Command::Set { image, .. } => (image, "changing"),
        _ => return None,
    })
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
        Hint::Shrink => " (--shrink allows it)",
        Hint::ToMinimum => " (--to-minimum shrinks to it)",
        Hint::KeepMerged => " (--keep merges and keeps them)",
        Hint::Force => " (--force goes ahead anyway)",
        Hint::SetParentIgnoreId => {
            "; if that parent's content is still what the child was made over (it was only resized or its id changed), `vhdkit set-parent --ignore-id CHILD PARENT` links them again"
        }
        Hint::Sign => " (`vhdkit sign` signs it; --require-signed refuses it)",
        Hint::Trust => {
            ": give its public key with --trust to trust it (--require-signed refuses it)"
        }
        // ForceShare is said only by the commands that take -U
        // (`force_share_hint`).
        _ => return None,
    })
}

/// A library warning with its hint said in terms of this tool's options.
fn warning_note(kind: WarningKind, h: Hint) -> Option<&'static str> {
    match (kind, h) {
        (WarningKind::ParentMismatchRefused, Hint::IgnoreParentId) => {
            Some(" (--ignore-parent-id reads it anyway, knowing it may be inconsistent)")
        }
        (WarningKind::ParentMismatchIgnored, Hint::IgnoreParentId) => {
            Some(" (as --ignore-parent-id asks)")
        }
        _ => option_note(h),
    }
}

/// Append to the message of warning `w` what this tool's options can do
/// about it (text and JSON output alike: `info --json` has always said it).
pub(crate) fn say_warning_hint(w: &mut Warning) {
    if let Some(note) = w.hint.and_then(|h| warning_note(w.kind, h)) {
        w.message.push_str(note);
    }
}

/// Append to the messages of `info`'s warnings (and its EVHD signature
/// warning) what this tool's options can do about them.
pub(crate) fn say_info_hints(info: &mut ImageInfo) {
    for w in &mut info.warnings {
        say_warning_hint(w);
    }
    if let FormatDetails::Evhd(d) = &mut info.details {
        let note = d.signature.hint().and_then(option_note);
        if let (Some(w), Some(note)) = (d.signature.warning_mut(), note) {
            w.push_str(note);
        }
    }
}

/// Append to a check report's findings and "not checked" lines what this
/// tool's options can do about them; `ignored` is whether
/// `--ignore-parent-id` was given (a parent mismatch is then read anyway).
pub(crate) fn say_check_hints(r: &mut CheckReport, ignored: bool) {
    for f in &mut r.findings {
        let note = match (f.kind, f.hint) {
            (FindingKind::PendingLog, Some(Hint::Repair)) => {
                Some(", `check --repair` applies them")
            }
            (_, h) => h.and_then(option_note),
        };
        if let Some(note) = note {
            f.message.push_str(note);
        }
    }
    for i in 0..r.not_checked.len() {
        let note = match r.not_checked_hint(i) {
            Some(Hint::Key) => Some(" (--key)"),
            Some(Hint::IgnoreParentId) if ignored => {
                warning_note(WarningKind::ParentMismatchIgnored, Hint::IgnoreParentId)
            }
            Some(Hint::IgnoreParentId) => {
                warning_note(WarningKind::ParentMismatchRefused, Hint::IgnoreParentId)
            }
            h => h.and_then(option_note),
        };
        if let Some(note) = note {
            r.not_checked[i].push_str(note);
        }
    }
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
            chain: true,
            image,
            parent,
            ..
        } => lifecycle::check_chain(json, &image, &parent),
        Command::Check {
            json,
            repair,
            image,
            parent,
            ..
        } => inspect::check(json, repair, &image, &parent),
        Command::Map {
            json,
            image,
            parent,
        } => inspect::map(json, &image, &parent),
        Command::Partitions {
            json,
            image,
            parent,
        } => partitions::partitions(json, &image, &parent),
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
        Command::Compact(a) => compact::compact(a),
        Command::Serve(a) => serve::serve(a),
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
        Command::SetParent {
            child,
            parent,
            ignore_id,
        } => lifecycle::set_parent(&child, &parent, ignore_id),
        Command::Rebase {
            child,
            new_base,
            force,
        } => lifecycle::rebase(&child, &new_base, force),
        Command::Set {
            image,
            reset_id,
            physical_sector_size,
            force,
        } => lifecycle::set(&image, reset_id, physical_sector_size, force),
        Command::Merge(a) => merge::merge(a),
        Command::Ls(a) => fs::ls(a),
        Command::Cat(a) => fs::cat(a),
        Command::Extract(a) => fs::extract(a),
    }
}
