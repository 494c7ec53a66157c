//! The `vhdkit` command: a thin layer over the library.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use vhdkit::convert::{self, ImageSpec};
use vhdkit::evhd::cipher::CipherId;
use vhdkit::evhd::header::Origin;
use vhdkit::evhd::keys::{DEFAULT_BITS, KeyFile, PrivateKey, PublicKey};
use vhdkit::evhd::signature::Status;
use vhdkit::report::{self, DiskType, Format};
use vhdkit::size::binary_unit_note;
use vhdkit::{Error, ErrorKind, Hint, OpenOptions, VirtualDisk};

#[derive(Parser)]
#[command(
    name = "vhdkit",
    version,
    about = "Inspect, check, create and convert VHD, VHDX and raw disk images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How to find and trust the parent of a differencing image.
#[derive(Args, Clone, Default)]
struct ParentArgs {
    /// Use this file as the parent instead of the locations recorded in the image.
    #[arg(long, value_name = "PATH")]
    parent_file: Option<PathBuf>,
    /// Accept a parent whose identity does not match the child's record.
    #[arg(long)]
    ignore_parent_id: bool,
    /// Private key (KeyPair.xml or PEM) for encrypted (EVHD) images; repeatable.
    #[arg(long = "key", value_name = "KEY", value_parser = parse_private_key)]
    key: Vec<Arc<PrivateKey>>,
    /// Format of the image (of SRC for convert) instead of detecting it;
    /// `-f raw` is the only way to read a file with a trace of another format as raw.
    #[arg(short = 'f', long = "format", value_name = "FORMAT")]
    image_format: Option<FormatArg>,
    /// Open images read-only without taking or honouring their locks, to
    /// inspect an image in use (what is read may be inconsistent).
    #[arg(short = 'U', long)]
    force_share: bool,
    /// Trust EVHD images signed by this key (public or private, KeyPair.xml or PEM); repeatable.
    /// The keys given with --key are trusted too.
    #[arg(long = "trust", value_name = "PUB", value_parser = parse_public_key)]
    trust: Vec<PublicKey>,
    /// Refuse an EVHD image that is not signed by a trusted key.
    #[arg(long)]
    require_signed: bool,
}

/// `--salvage` for the commands that read a whole source.
#[derive(Args, Clone, Default)]
struct SalvageArg {
    /// Read stored blocks that lie past the end of a damaged (truncated)
    /// image file as zeros instead of failing, list each such range on
    /// stderr and exit 3.
    #[arg(long)]
    salvage: bool,
}

/// Exit status of `convert`, `read` and `compare` when `--salvage` read
/// ranges as zeros.
const EXIT_SALVAGED: u8 = 3;

impl SalvageArg {
    /// The log to open the images with, if salvaging.
    fn log(&self) -> Option<Arc<vhdkit::damage::SalvageLog>> {
        self.salvage.then(vhdkit::damage::SalvageLog::new)
    }
}

/// List what a salvaging command read as zeros on stderr, and give the
/// exit status: `code`, or [`EXIT_SALVAGED`] when anything was salvaged.
fn report_salvage(log: Option<&vhdkit::damage::SalvageLog>, code: u8) -> u8 {
    let Some(log) = log else {
        return code;
    };
    let runs = log.runs();
    for r in &runs {
        eprintln!("vhdkit: salvaged: {r} (read as zeros)");
    }
    if runs.is_empty() { code } else { EXIT_SALVAGED }
}

impl ParentArgs {
    fn options(&self) -> OpenOptions {
        let mut o = OpenOptions::new()
            .print_warnings(true)
            .ignore_parent_id(self.ignore_parent_id)
            .parent_path(self.parent_file.clone())
            .format(self.image_format.map(Format::from))
            .force_share(self.force_share);
        o.keys = self.key.clone();
        o.trust = self.trust.clone();
        o.require_signed = self.require_signed;
        o
    }

    /// Refuse `--key` unless one of `images` (path and format) is an EVHD:
    /// a user who believes an image encrypted must learn that it is not,
    /// before reading it or writing plaintext into it.
    fn refuse_key(&self, images: &[(&Path, Format)]) -> Result<(), Error> {
        if self.key.is_empty() || images.iter().any(|(_, f)| *f == Format::Evhd) {
            return Ok(());
        }
        let what: Vec<String> = images
            .iter()
            .map(|(p, f)| {
                format!(
                    "{} is a {} image",
                    p.display(),
                    vhdkit::detect::format_name(*f)
                )
            })
            .collect();
        Err(Error::invalid_argument(format!(
            "--key is for encrypted (EVHD) images; {}",
            what.join(" and ")
        )))
    }

    /// Refuse `--key` unless one of `images` is an EVHD, judged from the
    /// files' signatures before anything opens them (a writable open may
    /// already change a file, e.g. replay a VHDX log). Files that cannot be
    /// read or resolved are left for the open to report.
    fn refuse_key_for(&self, images: &[&Path], opts: &OpenOptions) -> Result<(), Error> {
        if self.key.is_empty() {
            return Ok(());
        }
        let mut found = Vec::new();
        for &image in images {
            match vhdkit::open_file(image, false, opts.force_share)
                .and_then(|s| vhdkit::detect::resolve(&s, opts.format))
            {
                Ok(format) => found.push((image, format)),
                Err(_) => return Ok(()),
            }
        }
        self.refuse_key(&found)
    }

    /// Open `image` for a command; `--key` must be for an EVHD.
    fn open(&self, image: &Path, opts: &OpenOptions) -> Result<Box<dyn VirtualDisk>, Error> {
        self.refuse_key_for(&[image], opts)?;
        let disk = vhdkit::open(image, opts).map_err(|e| force_share_hint(e, opts.writable))?;
        // A parent that is not the recorded one is only ever opened for
        // inspection or on --ignore-parent-id: say so where people look.
        if opts.ignore_parent_id || opts.allow_missing_parent {
            let info = disk.info();
            for w in info.parent_mismatch_warnings() {
                eprintln!("vhdkit: warning: {}: {w}", image.display());
            }
        }
        Ok(disk)
    }
    /// With `-U`, warn that `images` are read without their locks.
    fn warn_force_share(&self, images: &[&Path]) {
        if self.force_share {
            warn_force_share(images);
        }
    }

    /// `-U` on a command that writes `image` is an error.
    fn refuse_force_share(&self, image: &Path, what: &str) -> Result<(), (Error, u8)> {
        refuse_force_share(self.force_share, image, what)
    }
}

/// For a read-only open by a command that takes `-U`: say that `-U` reads
/// an image that is in use (or cannot be locked) anyway.
fn force_share_hint(e: Error, writable: bool) -> Error {
    if !writable && vhdkit::io::force_share_would_help(&e) {
        e.with_note(" (-U/--force-share reads it without a lock)")
    } else {
        e
    }
}

/// Warn that `images` are opened without their locks (`-U`).
fn warn_force_share(images: &[&Path]) {
    for image in images {
        eprintln!(
            "vhdkit: warning: {}: opened with -U/--force-share, without a lock: if another program is writing it, what is read may be inconsistent",
            image.display()
        );
    }
}

/// `-U` opens read-only: refuse it on a command that writes `image`.
fn refuse_force_share(force_share: bool, image: &Path, what: &str) -> Result<(), (Error, u8)> {
    if force_share {
        return Err(fail1(
            Error::invalid_argument(format!(
                "-U/--force-share opens images read-only and cannot be used with {what}"
            ))
            .with_path(image),
        ));
    }
    Ok(())
}

/// A signed EVHD output vouches for its content with the signer's key, so
/// an EVHD source must be signed by a key the reader trusts (its `--key`s,
/// `--trust` keys, or the output's signer itself) and must not have fallen
/// back to its older header copy: otherwise `convert` would launder a
/// forged or rolled-back image into one a `--require-signed` reader
/// accepts, the same reason writers refuse such images.
fn refuse_to_sign_untrusted(src: &vhdkit::ImageInfo, signer: &PrivateKey) -> Result<(), Error> {
    if src.format != Format::Evhd {
        return Ok(());
    }
    let sig = src.details.evhd().map(|e| &e.signature);
    let trusted =
        sig.is_some_and(|s| s.trusted() || s.signer() == Some(signer.fingerprint().hex().as_str()));
    if !trusted {
        let why = sig
            .and_then(|s| s.warning())
            .unwrap_or("the source is not signed by a trusted key");
        return Err(Error::new(
            ErrorKind::Untrusted,
            format!(
                "refusing to sign: {why}; the output would be signed by {}, vouching for content nobody you trust wrote: check it and `vhdkit sign` the source, give its signer with --trust, or give only public --recipient keys (an unsigned output)",
                signer.fingerprint().short()
            ),
        ));
    }
    if let Some(w) = src
        .warnings
        .iter()
        .find(|w| w.kind == vhdkit::report::WarningKind::CommitMayBeLost)
    {
        return Err(Error::new(
            ErrorKind::NeedsRepair,
            format!(
                "refusing to sign: {w}; the output would make that state signed by {}: inspect the source and `vhdkit sign` it to accept the state it opens to",
                signer.fingerprint().short()
            ),
        ));
    }
    Ok(())
}

/// The public half of a key file given on the command line.
fn parse_public_key(s: &str) -> Result<PublicKey, String> {
    KeyFile::read(Path::new(s))
        .map(|k| k.public().clone())
        .map_err(|e| e.to_string())
}

/// Print the warning about an EVHD image's signature (unsigned, or by an
/// untrusted key) on stderr; `info` and `check` show it too.
fn warn_signature(disk: &dyn VirtualDisk, path: &Path) {
    if let Some(w) = disk
        .info()
        .details
        .evhd()
        .and_then(|e| e.signature.warning().map(str::to_string))
    {
        eprintln!("vhdkit: warning: {}: {w}", path.display());
    }
}

/// Signers a command that writes an EVHD trusts besides its `--key`s.
#[derive(Args, Clone, Default)]
struct TrustArgs {
    /// Trust EVHD images signed by this key (public or private, KeyPair.xml or PEM); repeatable.
    #[arg(long = "trust", value_name = "PUB", value_parser = parse_public_key)]
    trust: Vec<PublicKey>,
}

/// A private key given on the command line, loaded while parsing.
fn parse_private_key(s: &str) -> Result<Arc<PrivateKey>, String> {
    KeyFile::read(Path::new(s))
        .and_then(KeyFile::into_private)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// A recipient given on the command line: its key and a default label
/// (the key file's name).
#[derive(Clone)]
struct RecipientArg {
    key: PublicKey,
    name: String,
    /// The private key, when the file holds one: `convert` signs with it.
    private: Option<Arc<PrivateKey>>,
}

fn parse_recipient(s: &str) -> Result<RecipientArg, String> {
    let path = Path::new(s);
    let key = KeyFile::read(path).map_err(|e| e.to_string())?;
    Ok(RecipientArg {
        key: key.public().clone(),
        private: match key {
            KeyFile::Private(k) => Some(Arc::new(*k)),
            KeyFile::Public(_) => None,
        },
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    })
}

/// Recipients of a new EVHD: `--recipient` keys with `--label`s in order.
#[derive(Args, Clone, Default)]
struct RecipientArgs {
    /// A recipient's public or private key (KeyPair.xml or PEM); repeatable.
    /// For `convert -O evhd`, the first one given as a private key signs the output.
    #[arg(long = "recipient", value_name = "PUB", value_parser = parse_recipient)]
    recipient: Vec<RecipientArg>,
    /// Label of the recipient in the same position (default: the key file's name).
    #[arg(long = "label", value_name = "TEXT")]
    label: Vec<String>,
}

impl RecipientArgs {
    fn list(&self) -> Vec<(PublicKey, String)> {
        self.recipient
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let label = self.label.get(i).cloned().unwrap_or_else(|| r.name.clone());
                (r.key.clone(), label)
            })
            .collect()
    }

    /// The key that signs a new EVHD: the first recipient given as a private key.
    fn signer(&self) -> Option<Arc<PrivateKey>> {
        self.recipient.iter().find_map(|r| r.private.clone())
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum CipherArg {
    #[value(name = "aes-256-gcm")]
    Aes256Gcm,
    #[value(name = "aes-256-gcm-siv")]
    Aes256GcmSiv,
}

impl From<CipherArg> for CipherId {
    fn from(c: CipherArg) -> CipherId {
        match c {
            CipherArg::Aes256Gcm => CipherId::Aes256Gcm,
            CipherArg::Aes256GcmSiv => CipherId::Aes256GcmSiv,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Show everything about an image: sizes, type, identity, every header field.
    Info {
        /// Print JSON instead of a summary.
        #[arg(long)]
        json: bool,
        /// The image file (VHD, VHDX, EVHD or raw).
        image: PathBuf,
        #[command(flatten)]
        parent: ParentArgs,
    },
    /// Check an image for damage (exit 0 clean, 2 corrupt, 3 leaked space only, 1 could not check).
    Check {
        /// Print JSON instead of a report for people.
        #[arg(long)]
        json: bool,
        /// Fix what can be fixed safely (checksums, footer copies).
        #[arg(long)]
        repair: bool,
        /// The image file to check.
        image: PathBuf,
        #[command(flatten)]
        parent: ParentArgs,
    },
    /// Show where each range of the virtual disk is stored.
    Map {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The image file to map.
        image: PathBuf,
        #[command(flatten)]
        parent: ParentArgs,
    },
    /// Create a new image.
    Create {
        /// Output format (default: from the file extension).
        #[arg(short = 'f', long)]
        format: Option<FormatArg>,
        /// Disk type (default: dynamic, or differencing with --parent).
        #[arg(short = 't', long = "type")]
        disk_type: Option<TypeArg>,
        /// Block size of sparse formats, e.g. 2M.
        #[arg(long)]
        block_size: Option<String>,
        /// Parent of a differencing image.
        #[arg(long)]
        parent: Option<PathBuf>,
        #[command(flatten)]
        sectors: SectorArgs,
        /// Replace IMAGE if it exists.
        #[arg(long)]
        force: bool,
        /// The new image file (its format from the extension unless -f is given).
        image: PathBuf,
        /// Virtual size, e.g. 64M or 10G (taken from the parent for differencing images).
        size: Option<String>,
    },
    /// Convert an image to another format or type; DST `-` streams raw bytes to stdout.
    Convert {
        /// Output format (default: from DST's extension).
        #[arg(short = 'O', long = "output-format")]
        format: Option<FormatArg>,
        /// Output disk type.
        #[arg(short = 't', long = "type")]
        disk_type: Option<TypeArg>,
        /// Block size of sparse outputs.
        #[arg(long)]
        block_size: Option<String>,
        /// Make DST a differencing image over BASE holding only what differs from it.
        #[arg(short = 'B', long = "base")]
        base: Option<PathBuf>,
        #[command(flatten)]
        sectors: SectorArgs,
        /// Replace DST if it exists (only a regular file: never a link, device or FIFO).
        #[arg(long)]
        force: bool,
        /// Write the raw content in place onto DST, an existing block device or
        /// regular file at least as large as the virtual disk (nothing is
        /// created, truncated or renamed; an interrupted write cannot be undone).
        #[arg(long, conflicts_with_all = ["force", "base", "disk_type", "block_size"])]
        device: bool,
        /// Sync DST to stable storage before renaming it into place.
        #[arg(long)]
        sync: bool,
        /// Never show a progress bar.
        #[arg(short = 'q', long)]
        quiet: bool,
        #[command(flatten)]
        salvage: SalvageArg,
        /// The source image (VHD, VHDX, EVHD or raw; -f names its format).
        src: PathBuf,
        /// The new image file (format from its extension unless -O is given), `-` for raw bytes on stdout, or with --device an existing block device or file.
        dst: PathBuf,
        #[command(flatten)]
        parent: ParentArgs,
        #[command(flatten)]
        recipients: RecipientArgs,
        /// Cipher of an EVHD output.
        #[arg(long, default_value = "aes-256-gcm")]
        cipher: CipherArg,
    },
    /// Compare the content of two images (exit 0 same, 1 different, 2 error, 3 salvaged).
    Compare {
        /// The first image.
        a: PathBuf,
        /// The second image.
        b: PathBuf,
        #[command(flatten)]
        parent: ParentArgs,
        #[command(flatten)]
        salvage: SalvageArg,
    },
    /// Copy a range of the virtual disk to stdout.
    Read {
        /// The image to read from.
        image: PathBuf,
        /// Offset in the virtual disk, e.g. 0, 1M or 0x100000.
        #[arg(long)]
        offset: String,
        /// Number of bytes to copy, e.g. 512 or 4M.
        #[arg(long)]
        length: String,
        #[command(flatten)]
        parent: ParentArgs,
        #[command(flatten)]
        salvage: SalvageArg,
    },
    /// Write bytes into the virtual disk.
    Write {
        /// The image to write into.
        image: PathBuf,
        /// Offset in the virtual disk, e.g. 0, 1M or 0x100000.
        #[arg(long)]
        offset: String,
        /// Take the bytes from this file.
        #[arg(long, conflicts_with = "pattern")]
        input: Option<PathBuf>,
        /// Write this byte (e.g. 0xab) LENGTH times.
        #[arg(long, requires = "length")]
        pattern: Option<String>,
        /// Number of bytes to write (with --input: at most this many of the file's).
        #[arg(long)]
        length: Option<String>,
        /// Do not look for differencing images beside IMAGE that record it
        /// as their parent (and so no longer open, or read changed data,
        /// after the write), nor warn about them.
        #[arg(long)]
        no_children_check: bool,
        #[command(flatten)]
        parent: ParentArgs,
    },
    /// Create a new RSA key pair in the .NET KeyPair.xml form.
    Keygen {
        /// Modulus size in bits (at least 2048).
        #[arg(long, default_value_t = DEFAULT_BITS)]
        bits: usize,
        /// The key file to create.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Inspect and convert key files.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// List, add or remove the recipients of an EVHD.
    Recipients {
        #[command(subcommand)]
        cmd: RecipientsCmd,
    },
    /// Sign an EVHD's current state with a recipient's private key (a commit that changes no data).
    Sign {
        /// The EVHD image to sign.
        image: PathBuf,
        /// Private key of a recipient: it signs.
        #[arg(long = "key", value_name = "KEY", value_parser = parse_private_key, required = true)]
        key: Vec<Arc<PrivateKey>>,
    },
    /// Give an EVHD a new master key and re-encrypt every block (resumable).
    Rekey {
        /// The EVHD image to rekey.
        image: PathBuf,
        /// Private key of a recipient.
        #[arg(long = "key", value_name = "KEY", value_parser = parse_private_key, required = true)]
        key: Vec<Arc<PrivateKey>>,
        #[command(flatten)]
        trust: TrustArgs,
        /// Never show a progress bar.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Show a key's fingerprint, size and kind.
    Show {
        /// The key file (KeyPair.xml or PEM, private or public).
        key: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the public half as KeyPair.xml (Modulus and Exponent only).
    Public {
        /// The key file (KeyPair.xml or PEM, private or public).
        key: PathBuf,
        /// The public key file to create.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Write the key as PEM (PKCS#8 private key, or with --public the public key).
    ExportPem {
        /// The key file (KeyPair.xml or PEM).
        key: PathBuf,
        /// The PEM file to create.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        /// Export only the public key.
        #[arg(long)]
        public: bool,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum RecipientsCmd {
    /// List the recipients (no key needed).
    List {
        /// The EVHD image.
        image: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Open the image without taking or honouring its lock (see `info -U`).
        #[arg(short = 'U', long)]
        force_share: bool,
    },
    /// Add recipients; needs the key of an existing recipient.
    Add {
        /// The EVHD image.
        image: PathBuf,
        /// Private key of an existing recipient (KeyPair.xml or PEM); repeatable.
        #[arg(long = "key", value_name = "KEY", value_parser = parse_private_key, required = true)]
        key: Vec<Arc<PrivateKey>>,
        #[command(flatten)]
        recipients: RecipientArgs,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Remove a recipient by fingerprint (at least 8 hex digits) or key file:
    /// `vhdkit recipients remove IMAGE FPR --key KEY`.
    Remove {
        /// The EVHD image.
        image: PathBuf,
        /// Private key of a recipient (KeyPair.xml or PEM) to open the image with; repeatable.
        #[arg(long = "key", value_name = "KEY", value_parser = parse_private_key, required = true)]
        key: Vec<Arc<PrivateKey>>,
        /// Fingerprint (at least 8 hex digits) or key file of the recipient
        /// to remove (as `recipients list` prints them); the same as
        /// --fingerprint or --recipient.
        #[arg(value_name = "FPR", conflicts_with_all = ["fingerprint", "recipient"])]
        which: Option<String>,
        /// Fingerprint (prefix) of the recipient to remove.
        #[arg(long)]
        fingerprint: Option<String>,
        /// Key file of the recipient to remove.
        #[arg(long, value_parser = parse_recipient)]
        recipient: Option<RecipientArg>,
        #[command(flatten)]
        trust: TrustArgs,
    },
}

/// Sector sizes of a new VHDX.
#[derive(Args, Clone, Default)]
struct SectorArgs {
    /// Logical sector size of a VHDX: 512 or 4096 (default 512, or the
    /// source's or parent's).
    #[arg(
        long = "sector-size",
        alias = "logical-sector-size",
        value_name = "BYTES"
    )]
    logical: Option<u32>,
    /// Physical sector size of a VHDX: 512 or 4096 (default 4096).
    #[arg(long = "physical-sector-size", value_name = "BYTES")]
    physical: Option<u32>,
}

impl SectorArgs {
    fn apply(&self, spec: &mut ImageSpec) {
        spec.logical_sector_size = self.logical;
        spec.physical_sector_size = self.physical;
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Raw,
    Vhd,
    Vhdx,
    Evhd,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Raw => Format::Raw,
            FormatArg::Vhd => Format::Vhd,
            FormatArg::Vhdx => Format::Vhdx,
            FormatArg::Evhd => Format::Evhd,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum TypeArg {
    Fixed,
    Dynamic,
    Differencing,
}

impl From<TypeArg> for DiskType {
    fn from(t: TypeArg) -> DiskType {
        match t {
            TypeArg::Fixed => DiskType::Fixed,
            TypeArg::Dynamic => DiskType::Dynamic,
            TypeArg::Differencing => DiskType::Differencing,
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_exit(&e),
    };
    remove_temp_files_on_signals();
    match run(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err((e, _)) if is_broken_pipe(&e) => ExitCode::SUCCESS,
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

/// On SIGINT, SIGTERM and SIGHUP delete the unfinished output files
/// (see `vhdkit::pending`) and exit with 128 + the signal's number (130,
/// 143, 129), the status a shell reports for a command the signal killed.
fn remove_temp_files_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "vhdkit: warning: cannot handle interrupts ({e}); an interrupted command may leave a temporary file"
            );
            return;
        }
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            vhdkit::pending::remove_all_and_exit(128 + sig);
        }
    });
}

type Outcome = Result<u8, (Error, u8)>;

/// An image read by a command: its read errors name it (rather than the
/// file being written, or the other image of a comparison).
struct Named<'a>(&'a dyn VirtualDisk, &'a Path);

impl VirtualDisk for Named<'_> {
    fn virtual_size(&self) -> u64 {
        self.0.virtual_size()
    }
    fn logical_sector_size(&self) -> u32 {
        self.0.logical_sector_size()
    }
    fn physical_sector_size(&self) -> u32 {
        self.0.physical_sector_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        self.0.read_at(buf, offset).map_err(|e| e.with_path(self.1))
    }
    fn write_at(&mut self, _: &[u8], _: u64) -> Result<(), Error> {
        Err(Error::new(ErrorKind::ReadOnly, "the source image is read-only").with_path(self.1))
    }
    fn flush(&mut self) -> Result<(), Error> {
        Ok(())
    }
    fn map(&self, offset: u64, length: u64) -> Result<Vec<vhdkit::Extent>, Error> {
        self.0.map(offset, length).map_err(|e| e.with_path(self.1))
    }
    fn info(&self) -> vhdkit::ImageInfo {
        self.0.info()
    }
    fn parent_link_id(&self) -> Option<uuid::Uuid> {
        self.0.parent_link_id()
    }
}

/// Warn, before a write into `image`, about the differencing images beside
/// it that record it as their parent: a VHDX parent's data write id changes
/// with the write, so they no longer open; a VHD parent keeps its unique
/// id, so they still open but read the changed data.
fn warn_children(disk: &dyn VirtualDisk, image: &Path) {
    let Some(id) = disk.parent_link_id() else {
        return;
    };
    let scan = vhdkit::parent::children_beside(image, id);
    if scan.truncated {
        eprintln!(
            "vhdkit: note: {}: only the first {} image files of its folder were checked for children of this image",
            image.display(),
            vhdkit::parent::MAX_CHILD_SCAN
        );
    }
    if scan.children.is_empty() {
        return;
    }
    let names: Vec<String> = scan
        .children
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let effect = if disk.info().format == Format::Vhdx {
        "this write gives it a new data write id, so they will no longer open (vhdkit and Hyper-V refuse a parent whose data write id is not the one recorded; --ignore-parent-id reads them anyway, with data that may be inconsistent)"
    } else {
        "a VHD keeps its unique id, so they will still open, but what they read from it changes under them and their content may become inconsistent"
    };
    eprintln!(
        "vhdkit: warning: {} is the recorded parent of {} beside it: {effect}; --no-children-check skips this check",
        image.display(),
        names.join(", ")
    );
}

/// Errors of ordinary commands exit 1.
fn fail1(e: Error) -> (Error, u8) {
    (e, 1)
}

fn run(cmd: Command) -> Outcome {
    match cmd {
        Command::Info {
            json,
            image,
            parent,
        } => {
            parent.warn_force_share(&[&image]);
            let disk = parent
                .open(&image, &parent.options().allow_missing_parent(true))
                .map_err(fail1)?;
            warn_signature(disk.as_ref(), &image);
            emit(json, &disk.info(), report::write_info_text)?;
            Ok(0)
        }
        Command::Check {
            json,
            repair,
            image,
            parent,
        } => {
            if repair {
                parent.refuse_force_share(&image, "check --repair")?;
            }
            parent.warn_force_share(&[&image]);
            let opts = parent.options();
            parent.refuse_key_for(&[&image], &opts).map_err(fail1)?;
            let r = vhdkit::check(&image, &opts, repair)
                .map_err(|e| fail1(force_share_hint(e, repair)))?;
            emit(json, &r, report::write_check_text)?;
            Ok(r.exit_code() as u8)
        }
        Command::Map {
            json,
            image,
            parent,
        } => {
            parent.warn_force_share(&[&image]);
            let disk = parent
                .open(&image, &parent.options().allow_missing_parent(true))
                .map_err(fail1)?;
            warn_signature(disk.as_ref(), &image);
            let extents = disk
                .map(0, disk.virtual_size())
                .map_err(|e| fail1(e.with_path(&image)))?;
            emit(json, &extents[..], report::write_map_text)?;
            Ok(0)
        }
        Command::Create {
            format,
            disk_type,
            block_size,
            parent,
            sectors,
            force,
            image,
            size,
        } => {
            let format = output_format(format, &image, "-f/--format").map_err(fail1)?;
            let mut spec = ImageSpec::new(format);
            sectors.apply(&mut spec);
            spec.block_size = block_size
                .as_deref()
                .map(parse_size)
                .transpose()
                .map_err(fail1)?;
            spec.disk_type = match (disk_type, &parent) {
                (Some(t), _) => t.into(),
                (None, Some(_)) => DiskType::Differencing,
                (None, None) => spec.disk_type,
            };
            let size = match (&parent, size) {
                (Some(p), given) => {
                    spec.parent = Some(p.clone());
                    let size = vhdkit::open(p, &OpenOptions::new())
                        .map_err(fail1)?
                        .virtual_size();
                    // A differencing image has its parent's size: a SIZE
                    // that differs is refused rather than ignored.
                    if let Some(given) = given {
                        let want = parse_size(&given).map_err(fail1)?;
                        if want != size {
                            return Err(fail1(
                                Error::invalid_argument(format!(
                                    "a differencing image has the size of its parent {}, {}; \
                                 leave out SIZE ({given} is {})",
                                    p.display(),
                                    vhdkit::report::human_size(size),
                                    vhdkit::report::human_size(want)
                                ))
                                .with_path(&image),
                            ));
                        }
                    }
                    size
                }
                (None, Some(s)) => parse_size(&s).map_err(fail1)?,
                (None, None) => {
                    return Err(fail1(Error::invalid_argument(
                        "a size is needed (e.g. 64M) unless --parent is given",
                    )));
                }
            };
            if spec.disk_type == DiskType::Differencing && spec.parent.is_none() {
                return Err(fail1(Error::invalid_argument(
                    "a differencing image needs --parent",
                )));
            }
            let out = convert::OutputOptions {
                overwrite: force,
                sync: true,
            };
            convert::create_file(&image, &spec, size, out, |_| Ok(())).map_err(fail1)?;
            Ok(0)
        }
        Command::Convert {
            format,
            disk_type,
            block_size,
            base,
            sectors,
            force,
            device,
            sync,
            quiet,
            salvage,
            src,
            dst,
            parent,
            recipients,
            cipher,
        } => {
            if device {
                let salvage = salvage.log();
                refuse_device_options(&dst, format, &sectors, &recipients)?;
                let code = convert_device(&src, &dst, quiet, &parent, salvage.clone())?;
                return Ok(report_salvage(salvage.as_deref(), code));
            }
            if dst.as_os_str() != "-" {
                // Before any work: DST must be nothing or a regular file.
                vhdkit::device::refuse_unless_replaceable(&dst, true).map_err(fail1)?;
            }
            parent.warn_force_share(&[&src]);
            let salvage = salvage.log();
            let disk = parent
                .open(&src, &parent.options().salvage(salvage.clone()))
                .map_err(fail1)?;
            warn_signature(disk.as_ref(), &src);
            let src_info = disk.info();
            let origin = Origin::from_info(&src_info);
            let size = disk.virtual_size();
            let bar = progress_bar(size, quiet);
            let mut tick = |done: u64| {
                if let Some(b) = &bar {
                    b.set_position(done);
                }
            };
            if dst.as_os_str() == "-" {
                if base.is_some() {
                    return Err(fail1(Error::invalid_argument(
                        "-B makes a differencing image and cannot stream to stdout",
                    )));
                }
                let mut out = std::io::stdout().lock();
                convert::stream_raw(&Named(disk.as_ref(), &src), &mut out, &mut tick)
                    .map_err(fail1)?;
            } else {
                refuse_same_file(&src, &dst).map_err(fail1)?;
                // From an EVHD, an unknown extension restores the origin format.
                let format = match (
                    output_format(format, &dst, "-O/--output-format"),
                    origin.and_then(|o| o.format),
                ) {
                    (Ok(f), _) => f,
                    (Err(_), Some(f)) if f != Format::Evhd => f,
                    (Err(e), _) => return Err(fail1(e)),
                };
                let out = convert::OutputOptions {
                    overwrite: force,
                    sync,
                };
                let mut spec = ImageSpec::new(format);
                sectors.apply(&mut spec);
                if format == Format::Vhdx
                    && spec.logical_sector_size.is_none()
                    && base.is_none()
                    && disk.logical_sector_size() != 512
                {
                    // Keep the source's sector size.
                    spec.logical_sector_size = Some(disk.logical_sector_size());
                }
                spec.block_size = block_size
                    .as_deref()
                    .map(parse_size)
                    .transpose()
                    .map_err(fail1)?;
                if let Some(t) = disk_type {
                    spec.disk_type = t.into();
                }
                // Restore the origin's type and block size unless overridden.
                if let Some(o) = origin.filter(|o| o.format == Some(format)) {
                    if disk_type.is_none()
                        && let Some(t) = o.disk_type
                    {
                        spec.disk_type = t;
                    }
                    if spec.block_size.is_none() && o.block_size != 0 && format != Format::Raw {
                        spec.block_size = Some(u64::from(o.block_size));
                    }
                    if format == Format::Vhdx && spec.physical_sector_size.is_none() {
                        spec.physical_sector_size = Some(o.physical_sector_size);
                    }
                }
                if format == Format::Evhd {
                    if let Some(signer) = recipients.signer() {
                        refuse_to_sign_untrusted(&src_info, &signer)
                            .map_err(|e| fail1(e.with_path(&src)))?;
                    }
                    spec.evhd = Some(vhdkit::evhd::EvhdOptions {
                        recipients: recipients.list(),
                        cipher: cipher.into(),
                        origin: Origin::of(&src_info),
                        signer: recipients.signer(),
                    });
                }
                match base {
                    Some(b) => {
                        refuse_same_file(&b, &dst).map_err(fail1)?;
                        parent.warn_force_share(&[&b]);
                        let base_disk = vhdkit::open(
                            &b,
                            &OpenOptions::new()
                                .force_share(parent.force_share)
                                .salvage(salvage.clone()),
                        )
                        .map_err(|e| fail1(force_share_hint(e, false)))?;
                        spec.disk_type = DiskType::Differencing;
                        let b_path = b.clone();
                        spec.parent = Some(b);
                        convert::create_file(&dst, &spec, size, out, |out| {
                            let base = Named(base_disk.as_ref(), &b_path);
                            convert::copy_delta(&Named(disk.as_ref(), &src), &base, out, &mut tick)
                        })
                        .map_err(fail1)?;
                    }
                    None => {
                        if spec.disk_type == DiskType::Differencing {
                            return Err(fail1(Error::invalid_argument(
                                "use -B BASE to convert into a differencing image",
                            )));
                        }
                        convert::create_file(&dst, &spec, size, out, |out| {
                            convert::copy_into(&Named(disk.as_ref(), &src), out, &mut tick)
                        })
                        .map_err(fail1)?;
                    }
                }
            }
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            Ok(report_salvage(salvage.as_deref(), 0))
        }
        Command::Compare {
            a,
            b,
            parent,
            salvage,
        } => {
            parent.warn_force_share(&[&a, &b]);
            let salvage = salvage.log();
            let opts = parent.options().salvage(salvage.clone());
            parent
                .refuse_key_for(&[&a, &b], &opts)
                .map_err(|e| (e, 2))?;
            let da = vhdkit::open(&a, &opts).map_err(|e| (force_share_hint(e, false), 2))?;
            let db = vhdkit::open(&b, &opts).map_err(|e| (force_share_hint(e, false), 2))?;
            warn_signature(da.as_ref(), &a);
            warn_signature(db.as_ref(), &b);
            let diff = convert::first_difference(&Named(da.as_ref(), &a), &Named(db.as_ref(), &b));
            match diff.map_err(|e| (e, 2))? {
                None => {
                    println!("Images are identical.");
                    Ok(report_salvage(salvage.as_deref(), 0))
                }
                Some(off) => {
                    if da.virtual_size() != db.virtual_size()
                        && off == da.virtual_size().min(db.virtual_size())
                    {
                        println!(
                            "Images differ: sizes {} and {}; content differs from offset {off:#x} ({off})",
                            da.virtual_size(),
                            db.virtual_size()
                        );
                    } else {
                        println!("Images differ at offset {off:#x} ({off}).");
                    }
                    Ok(report_salvage(salvage.as_deref(), 1))
                }
            }
        }
        Command::Read {
            image,
            offset,
            length,
            parent,
            salvage,
        } => {
            parent.warn_force_share(&[&image]);
            let salvage = salvage.log();
            let disk = parent
                .open(&image, &parent.options().salvage(salvage.clone()))
                .map_err(fail1)?;
            warn_signature(disk.as_ref(), &image);
            let offset = parse_size(&offset).map_err(fail1)?;
            let length = parse_size(&length).map_err(fail1)?;
            vhdkit::disk::check_extent(disk.virtual_size(), offset, length)
                .map_err(|e| fail1(e.with_path(&image)))?;
            let mut out = std::io::stdout().lock();
            let mut buf = vec![0u8; convert::COPY_CHUNK];
            let mut pos = offset;
            while pos < offset + length {
                let n = (offset + length - pos).min(buf.len() as u64) as usize;
                disk.read_at(&mut buf[..n], pos)
                    .map_err(|e| fail1(e.with_path(&image)))?;
                out.write_all(&buf[..n]).map_err(stdout_err)?;
                pos += n as u64;
            }
            out.flush().map_err(stdout_err)?;
            Ok(report_salvage(salvage.as_deref(), 0))
        }
        Command::Write {
            image,
            offset,
            input,
            pattern,
            length,
            no_children_check,
            parent,
        } => {
            parent.refuse_force_share(&image, "write")?;
            let offset = parse_size(&offset).map_err(fail1)?;
            let no_source = || {
                fail1(Error::invalid_argument(
                    "give --input FILE or --pattern BYTE --length N",
                ))
            };
            if input.is_none() == pattern.is_none() {
                return Err(no_source());
            }
            // Open (and lock) the image before reading the input, so an image
            // in use is refused before the input (a pipe) is consumed.
            let mut disk = parent
                .open(&image, &parent.options().writable(true))
                .map_err(fail1)?;
            warn_signature(disk.as_ref(), &image);
            let data = match (input, pattern) {
                (Some(f), None) => {
                    let mut v = Vec::new();
                    std::fs::File::open(&f)
                        .and_then(|mut h| h.read_to_end(&mut v))
                        .map_err(|e| {
                            fail1(Error::io(e, "cannot read the input file").with_path(&f))
                        })?;
                    if let Some(l) = length {
                        let l = parse_size(&l).map_err(fail1)? as usize;
                        v.truncate(l);
                    }
                    v
                }
                (None, Some(p)) => {
                    let byte = parse_byte(&p).map_err(fail1)?;
                    let l = parse_size(length.as_deref().unwrap_or("0")).map_err(fail1)?;
                    let l = usize::try_from(l)
                        .map_err(|_| fail1(Error::invalid_argument("length too large")))?;
                    vec![byte; l]
                }
                _ => return Err(no_source()),
            };
            // A zero-length write changes nothing, so it breaks no child.
            // (nor does one the disk refuses, such as one past its end).
            if !no_children_check
                && !data.is_empty()
                && vhdkit::disk::check_range(disk.virtual_size(), offset, data.len()).is_ok()
            {
                warn_children(disk.as_ref(), &image);
            }
            disk.write_at(&data, offset)
                .and_then(|_| disk.flush())
                .map_err(|e| fail1(e.with_path(&image)))?;
            Ok(0)
        }
        Command::Keygen {
            bits,
            output,
            force,
        } => {
            let key = PrivateKey::generate(bits).map_err(fail1)?;
            write_key_file(&output, key.to_xml().as_bytes(), true, force).map_err(fail1)?;
            println!(
                "{}  {} bits  {}",
                key.fingerprint().short(),
                bits,
                output.display()
            );
            Ok(0)
        }
        Command::Key { cmd } => run_key(cmd),
        Command::Recipients { cmd } => run_recipients(cmd),
        Command::Sign { image, key } => {
            let mut disk = open_evhd(&image, key, true, false, TrustArgs::default(), true)?;
            let before = match disk.signature() {
                Status::Unsigned => "unsigned".to_string(),
                Status::Signed {
                    fingerprint, label, ..
                } => format!("signed by {} {label:?}", fingerprint.short()),
            };
            let fp = disk.sign().map_err(|e| fail1(e.with_path(&image)))?;
            let label = disk
                .recipients()
                .iter()
                .find(|s| s.key.fingerprint() == fp)
                .map(|s| s.label.clone())
                .unwrap_or_default();
            println!(
                "signed by {}  {label}  (sequence {}; was {before})",
                fp.short(),
                disk.header().sequence
            );
            Ok(0)
        }
        Command::Rekey {
            image,
            key,
            trust,
            quiet,
        } => {
            // Like `sign` and `recipients`: a file that is no EVHD, or a
            // damaged one, is named as such.
            let mut disk = open_evhd(&image, key, true, false, trust, false)?;
            let resumed = disk.rekey_in_progress();
            let bar = progress_bar(0, quiet);
            disk.rekey(&mut |done, total| {
                if let Some(b) = &bar {
                    b.set_length(total);
                    b.set_position(done);
                }
            })
            .map_err(|e| fail1(e.with_path(&image)))?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            println!(
                "rekeyed{}: new master key, key epoch {}",
                if resumed { " (resumed)" } else { "" },
                disk.header().epoch
            );
            Ok(0)
        }
    }
}

fn refuse_device_options(
    dst: &Path,
    format: Option<FormatArg>,
    sectors: &SectorArgs,
    recipients: &RecipientArgs,
) -> Result<(), (Error, u8)> {
    let refuse = |m: String| Err(fail1(Error::invalid_argument(m)));
    if dst.as_os_str() == "-" {
        return refuse("--device writes onto an existing block device or file; DST `-` (stdout) streams without it".into());
    }
    match format.map(Format::from) {
        Some(Format::Raw) => {}
        Some(f) => {
            return refuse(format!(
                "--device writes the raw content only; -O {} cannot be written in place",
                f.as_str()
            ));
        }
        // A DST named like an image of another format is most likely not
        // meant to receive raw bytes: `-O raw` confirms.
        None => match output_format(None, dst, "-O/--output-format") {
            Ok(f) if f != Format::Raw => {
                return refuse(format!(
                    "--device writes the raw content only, and {} is named like a {} image; pass -O raw to write raw bytes into it",
                    dst.display(),
                    vhdkit::detect::format_name(f)
                ));
            }
            _ => {}
        },
    }
    if sectors.logical.is_some() || sectors.physical.is_some() || !recipients.recipient.is_empty() {
        return refuse(
            "--device writes the raw content only; sector sizes and recipients belong to image formats".into(),
        );
    }
    Ok(())
}

/// `convert --device`: the raw content of SRC written in place onto DST,
/// an existing block device or regular file.
fn convert_device(
    src: &Path,
    dst: &Path,
    quiet: bool,
    parent: &ParentArgs,
    salvage: Option<std::sync::Arc<vhdkit::damage::SalvageLog>>,
) -> Outcome {
    refuse_same_file(src, dst).map_err(fail1)?;
    // The target first: a missing, wrong or busy target is refused before
    // the source is read, and its lock keeps other writers away.
    let target = vhdkit::device::DeviceTarget::open(dst).map_err(fail1)?;
    parent.warn_force_share(&[src]);
    let disk = parent
        .open(src, &parent.options().salvage(salvage))
        .map_err(fail1)?;
    warn_signature(disk.as_ref(), src);
    let bar = progress_bar(disk.virtual_size(), quiet);
    let mut tick = |done: u64| {
        if let Some(b) = &bar {
            b.set_position(done);
        }
    };
    vhdkit::pending::writing_in_place(Some(dst));
    let r = vhdkit::device::write_in_place(&Named(disk.as_ref(), src), &target, &mut tick);
    vhdkit::pending::writing_in_place(None);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    r.map_err(fail1)?;
    Ok(0)
}

/// Print a report to stdout as JSON or as text for people.
fn emit<T: serde::Serialize + ?Sized>(
    json: bool,
    value: &T,
    text: fn(&T, &mut dyn Write) -> std::io::Result<()>,
) -> Result<(), (Error, u8)> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, value)
            .map_err(|e| fail1(Error::invalid_argument(format!("cannot print JSON: {e}"))))?;
        writeln!(out).map_err(stdout_err)
    } else {
        text(value, &mut out).map_err(stdout_err)
    }
}

fn run_key(cmd: KeyCmd) -> Outcome {
    let read = |p: &Path| KeyFile::read(p).map_err(fail1);
    match cmd {
        KeyCmd::Show { key, json } => {
            let k = read(&key)?;
            let p = k.public();
            let kind = match k {
                KeyFile::Private(_) => "private",
                KeyFile::Public(_) => "public",
            };
            let mut out = std::io::stdout().lock();
            if json {
                let v = serde_json::json!({
                    "fingerprint": p.fingerprint().hex(),
                    "short": p.fingerprint().short(),
                    "bits": p.bits(),
                    "kind": kind,
                });
                print_json(&v, &mut out)?;
            } else {
                writeln!(out, "fingerprint  {}", p.fingerprint().hex()).map_err(stdout_err)?;
                writeln!(out, "short        {}", p.fingerprint().short()).map_err(stdout_err)?;
                writeln!(out, "bits         {}", p.bits()).map_err(stdout_err)?;
                writeln!(out, "kind         {kind}").map_err(stdout_err)?;
            }
            Ok(0)
        }
        KeyCmd::Public { key, output, force } => {
            refuse_same_file(&key, &output).map_err(fail1)?;
            let k = read(&key)?;
            write_key_file(&output, k.public().to_xml().as_bytes(), false, force).map_err(fail1)?;
            Ok(0)
        }
        KeyCmd::ExportPem {
            key,
            output,
            public,
            force,
        } => {
            refuse_same_file(&key, &output).map_err(fail1)?;
            let k = read(&key)?;
            if public {
                let pem = k.public().to_pem().map_err(fail1)?;
                write_key_file(&output, pem.as_bytes(), false, force).map_err(fail1)?;
            } else {
                let pem = k.into_private().and_then(|k| k.to_pem()).map_err(fail1)?;
                write_key_file(&output, pem.as_bytes(), true, force).map_err(fail1)?;
            }
            Ok(0)
        }
    }
}

/// Open an EVHD for the commands that only take EVHD images. A writer
/// trusts its `keys` and `trust` as signers; `vouch` (the `sign` command)
/// writes although no trusted key signed the image.
fn open_evhd(
    image: &Path,
    keys: Vec<Arc<PrivateKey>>,
    writable: bool,
    force_share: bool,
    trust: TrustArgs,
    vouch: bool,
) -> Result<vhdkit::evhd::EvhdDisk, (Error, u8)> {
    let mut opts = OpenOptions::new()
        .writable(writable)
        .print_warnings(true)
        .vouch(vouch);
    opts.keys = keys;
    opts.trust = trust.trust;
    let storage = if force_share {
        refuse_force_share(writable, image, "a command that changes the image")?;
        vhdkit::io::FileStorage::open_force_share(image)
    } else {
        vhdkit::io::FileStorage::open(image, writable)
    }
    .map_err(|e| fail1(force_share_hint(e, writable)))?;
    // Any trace of EVHD (a damaged one too) is opened as EVHD, so that
    // damage is reported as such.
    if let Err(e) = vhdkit::detect::resolve(&storage, Some(Format::Evhd)) {
        return Err(fail1(e.with_path(image)));
    }
    vhdkit::evhd::EvhdDisk::open(Box::new(storage), Some(image.to_path_buf()), &opts)
        .map_err(|e| fail1(vhdkit::detect::damaged(Format::Evhd, e).with_path(image)))
}

fn run_recipients(cmd: RecipientsCmd) -> Outcome {
    match cmd {
        RecipientsCmd::List {
            image,
            json,
            force_share,
        } => {
            if force_share {
                warn_force_share(&[&image]);
            }
            let disk = open_evhd(
                &image,
                Vec::new(),
                false,
                force_share,
                TrustArgs::default(),
                false,
            )?;
            let mut out = std::io::stdout().lock();
            let list: Vec<_> = disk
                .recipients()
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "fingerprint": s.key.fingerprint().hex(),
                        "short": s.key.fingerprint().short(),
                        "bits": s.key.bits(),
                        "label": s.label,
                    })
                })
                .collect();
            if json {
                print_json(&list, &mut out)?;
            } else {
                for s in disk.recipients() {
                    writeln!(
                        out,
                        "{}  {:>5} bits  {}",
                        s.key.fingerprint().hex(),
                        s.key.bits(),
                        s.label
                    )
                    .map_err(stdout_err)?;
                }
            }
            Ok(0)
        }
        RecipientsCmd::Add {
            image,
            key,
            recipients,
            trust,
        } => {
            let list = recipients.list();
            if list.is_empty() {
                return Err(fail1(Error::invalid_argument(
                    "give the keys to add with --recipient",
                )));
            }
            let mut disk = open_evhd(&image, key, true, false, trust, false)?;
            for (k, label) in list {
                disk.add_recipient(&k, &label)
                    .map_err(|e| fail1(e.with_path(&image)))?;
                println!("added {}  {label}", k.fingerprint().short());
            }
            Ok(0)
        }
        RecipientsCmd::Remove {
            image,
            key,
            which,
            fingerprint,
            recipient,
            trust,
        } => {
            // FPR names a key file when one by that name exists, else a
            // fingerprint.
            let (fingerprint, recipient) = match which {
                Some(w) if Path::new(&w).is_file() => (
                    None,
                    Some(
                        parse_recipient(&w)
                            .map_err(|e| fail1(Error::new(ErrorKind::InvalidKey, e)))?,
                    ),
                ),
                Some(w) if !w.chars().all(|c| c.is_ascii_hexdigit()) => {
                    return Err(fail1(Error::invalid_argument(format!(
                        "{w} is neither a key file nor a fingerprint \
                         (hex digits, as `vhdkit recipients list` prints them)"
                    ))));
                }
                Some(w) => (Some(w), None),
                None => (fingerprint, recipient),
            };
            let prefix = match (fingerprint, recipient) {
                (Some(f), _) => f,
                (None, Some(r)) => r.key.fingerprint().hex(),
                (None, None) => {
                    return Err(fail1(Error::invalid_argument(
                        "give the recipient to remove: FPR (its fingerprint or key file), \
                         --fingerprint or --recipient",
                    )));
                }
            };
            let mut disk = open_evhd(&image, key, true, false, trust, false)?;
            let removed = disk
                .remove_recipient(&prefix)
                .map_err(|e| fail1(e.with_path(&image)))?;
            println!(
                "removed {}  {}",
                removed.key.fingerprint().short(),
                removed.label
            );
            eprintln!(
                "note: a removed recipient who kept the master key can still read the image; run `vhdkit rekey` to revoke it"
            );
            Ok(0)
        }
    }
}

/// Write a key file (temporary file, 0600 or 0644, rename; never through a symlink).
fn write_key_file(path: &Path, bytes: &[u8], private: bool, force: bool) -> vhdkit::Result<()> {
    let kind = if private {
        vhdkit::keyfile::KeyKind::Private
    } else {
        vhdkit::keyfile::KeyKind::Public
    };
    vhdkit::keyfile::write_key_file(path, bytes, kind, force)
}

fn print_json(v: &impl serde::Serialize, out: &mut dyn Write) -> Result<(), (Error, u8)> {
    serde_json::to_writer_pretty(&mut *out, v)
        .map_err(|e| fail1(Error::invalid_argument(format!("cannot print JSON: {e}"))))?;
    writeln!(out).map_err(stdout_err)
}

/// A reader that stopped reading our output (`vhdkit ... | head`) is not an error.
fn is_broken_pipe(e: &Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

fn stdout_err(e: std::io::Error) -> (Error, u8) {
    fail1(Error::io(e, "writing to standard output"))
}

/// A size from the command line (see [`vhdkit::size::parse_size`]); a
/// decimal-looking unit such as `10GB` is read as binary with a note on
/// stderr saying so.
fn parse_size(s: &str) -> vhdkit::Result<u64> {
    let n = vhdkit::size::parse_size(s)?;
    if let Some(note) = binary_unit_note(s) {
        eprintln!("vhdkit: note: {note}");
    }
    Ok(n)
}

fn parse_byte(s: &str) -> vhdkit::Result<u8> {
    let t = s.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u8::from_str_radix(h, 16),
        None => t.parse::<u8>(),
    };
    r.map_err(|_| {
        Error::invalid_argument(format!("pattern {s:?} is not a byte (0-255 or 0x00-0xff)"))
    })
}

/// The output format: `-f`/`-O` if given, else from the extension;
/// `flag` is the command's option that names it, for the error.
fn output_format(arg: Option<FormatArg>, path: &Path, flag: &str) -> vhdkit::Result<Format> {
    if let Some(f) = arg {
        return Ok(f.into());
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "vhd" | "avhd" => Ok(Format::Vhd),
        "vhdx" | "avhdx" => Ok(Format::Vhdx),
        "evhd" => Ok(Format::Evhd),
        "raw" | "img" | "bin" | "dd" => Ok(Format::Raw),
        _ => Err(Error::invalid_argument(format!(
            "cannot tell the format of {} from its extension; pass {flag} raw, vhd, vhdx or evhd",
            path.display()
        ))),
    }
}

/// Refuse to write an output over one of the inputs: the same path, or
/// another name (a hard or symbolic link) of the same file, judged by
/// device and inode where the system has them.
fn refuse_same_file(input: &Path, output: &Path) -> vhdkit::Result<()> {
    if same_file(input, output) {
        return Err(Error::invalid_argument(format!(
            "the output {} is also an input",
            output.display()
        )));
    }
    Ok(())
}

/// Whether `a` and `b` name one existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    matches!(
        (std::fs::canonicalize(a), std::fs::canonicalize(b)),
        (Ok(x), Ok(y)) if x == y
    )
}

fn progress_bar(total: u64, quiet: bool) -> Option<ProgressBar> {
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
