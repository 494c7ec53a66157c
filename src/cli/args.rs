//! The command line: every command, option and argument, and the parsers
//! that turn argument text into values (key files are read while parsing).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};

use vhdkit::CipherId;
use vhdkit::Error;
use vhdkit::report::{DiskType, Format};
use vhdkit::size::binary_unit_note;
use vhdkit::{DEFAULT_BITS, KeyFile, PrivateKey, PublicKey};

#[derive(Parser)]
#[command(
    name = "vhdkit",
    version,
    about = "Inspect, check, create and convert VHD, VHDX and raw disk images"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// How to find and trust the parent of a differencing image.
#[derive(Args, Clone, Default)]
pub struct ParentArgs {
    /// Use this file as the parent instead of the locations recorded in the image.
    #[arg(long, value_name = "PATH")]
    pub parent_file: Option<PathBuf>,
    /// Accept a parent whose identity does not match the child's record.
    #[arg(long)]
    pub ignore_parent_id: bool,
    /// Private key (KeyPair.xml or PEM) for encrypted (EVHD) images; repeatable.
    #[arg(long = "key", value_name = "KEY", value_parser = parse_private_key)]
    pub key: Vec<Arc<PrivateKey>>,
    /// Format of the image (of SRC for convert) instead of detecting it;
    /// `-f raw` is the only way to read a file with a trace of another format as raw.
    #[arg(short = 'f', long = "format", value_name = "FORMAT")]
    pub image_format: Option<FormatArg>,
    /// Open images read-only without taking or honouring their locks, to
    /// inspect an image in use (what is read may be inconsistent).
    #[arg(short = 'U', long)]
    pub force_share: bool,
    /// Trust EVHD images signed by this key (public or private, KeyPair.xml or PEM); repeatable.
    /// The keys given with --key are trusted too.
    #[arg(long = "trust", value_name = "PUB", value_parser = parse_public_key)]
    pub trust: Vec<PublicKey>,
    /// Refuse an EVHD image that is not signed by a trusted key.
    #[arg(long)]
    pub require_signed: bool,
}

/// `--salvage` for the commands that read a whole source.
#[derive(Args, Clone, Default)]
pub struct SalvageArg {
    /// Read stored blocks that lie past the end of a damaged (truncated)
    /// image file as zeros instead of failing, list each such range on
    /// stderr and exit 3.
    #[arg(long)]
    pub salvage: bool,
}

/// Signers a command that writes an EVHD trusts besides its `--key`s.
#[derive(Args, Clone, Default)]
pub struct TrustArgs {
    /// Trust EVHD images signed by this key (public or private, KeyPair.xml or PEM); repeatable.
    #[arg(long = "trust", value_name = "PUB", value_parser = parse_public_key)]
    pub trust: Vec<PublicKey>,
}

/// A recipient given on the command line: its key and a default label
/// (the key file's name).
#[derive(Clone)]
pub struct RecipientArg {
    pub key: PublicKey,
    pub name: String,
    /// The private key, when the file holds one: `convert` signs with it.
    pub private: Option<Arc<PrivateKey>>,
}

/// Recipients of a new EVHD: `--recipient` keys with `--label`s in order.
#[derive(Args, Clone, Default)]
pub struct RecipientArgs {
    /// A recipient's public or private key (KeyPair.xml or PEM); repeatable.
    /// For `convert -O evhd`, the first one given as a private key signs the output.
    #[arg(long = "recipient", value_name = "PUB", value_parser = parse_recipient)]
    pub recipient: Vec<RecipientArg>,
    /// Label of the recipient in the same position (default: the key file's name).
    #[arg(long = "label", value_name = "TEXT")]
    pub label: Vec<String>,
}

impl RecipientArgs {
    /// The recipients with their labels.
    pub fn list(&self) -> Vec<(PublicKey, String)> {
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
    pub fn signer(&self) -> Option<Arc<PrivateKey>> {
        self.recipient.iter().find_map(|r| r.private.clone())
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum CipherArg {
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
pub enum Command {
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
        /// Open and check every link of the parent chain, naming the link where it breaks.
        #[arg(long, conflicts_with = "repair")]
        chain: bool,
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
    /// List the partitions (MBR or GPT) and the file system found in each.
    Partitions {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The image file.
        image: PathBuf,
        #[command(flatten)]
        parent: ParentArgs,
    },
    /// Create a new image.
    Create(CreateArgs),
    /// Convert an image to another format or type; DST `-` streams raw bytes to stdout.
    Convert(ConvertArgs),
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
    Write(WriteArgs),
    /// Stop storing blocks that read as zeros and shrink the file in place (Optimize-VHD).
    Compact(CompactArgs),
    /// Serve images as network block devices (NBD) until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Change an image's virtual size in place (a smaller size needs --shrink).
    Resize(ResizeArgs),
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
        /// Print the new key's fingerprint, size and kind as JSON (as `key show --json`).
        #[arg(long)]
        json: bool,
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
    /// Record a new place for a differencing image's parent (after it moved).
    SetParent {
        /// The differencing image.
        child: PathBuf,
        /// The parent at its new place.
        parent: PathBuf,
        /// Take the new parent's id into the child instead of requiring the recorded one.
        #[arg(long)]
        ignore_id: bool,
    },
    /// Put a differencing image over another base, keeping its content.
    Rebase {
        /// The differencing image.
        child: PathBuf,
        /// The new base image.
        new_base: PathBuf,
        /// Rebase a VHDX even while differencing images beside it record it as their parent.
        #[arg(long)]
        force: bool,
    },
    /// Change an image's identity or physical sector size.
    #[command(group(clap::ArgGroup::new("change").required(true).args(["reset_id", "physical_sector_size"])))]
    Set {
        /// The image.
        image: PathBuf,
        /// Give the image a new unique id.
        #[arg(long, conflicts_with = "physical_sector_size")]
        reset_id: bool,
        /// The physical sector size to record (VHDX only).
        #[arg(long, value_name = "512|4096")]
        physical_sector_size: Option<u32>,
        /// Reset the id even while differencing images beside it record the old one.
        #[arg(long)]
        force: bool,
    },
    /// Merge a differencing image into its parent (or an older ancestor) in place.
    Merge(MergeArgs),
    /// List a directory of a file system in the image (ext2/3/4, NTFS, FAT): IMAGE[:PART]:/PATH.
    Ls(super::fs::LsArgs),
    /// Print a file of a file system in the image to stdout: IMAGE[:PART]:/PATH.
    Cat(super::fs::CatArgs),
    /// Copy a file or directory tree out of a file system in the image: IMAGE[:PART]:/PATH DEST.
    Extract(super::fs::ExtractArgs),
}

// The arguments of `merge`.
#[derive(Args)]
pub struct MergeArgs {
    /// The differencing image whose data is merged.
    pub child: PathBuf,
    /// Merge into this ancestor (merging every level in between) instead of the parent.
    #[arg(long, value_name = "ANCESTOR")]
    pub into: Option<PathBuf>,
    /// Keep the merged images (they are no longer valid afterwards).
    #[arg(long)]
    pub keep: bool,
    /// Merge although other differencing images depend on the ancestor or a
    /// merged level (they are no longer valid afterwards).
    #[arg(long)]
    pub force: bool,
    /// Use this file as the child's parent instead of the locations recorded in it.
    #[arg(long, value_name = "PATH")]
    pub parent_file: Option<PathBuf>,
    /// Print nothing on success.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

// The arguments of `create` (no doc comment: clap would show it in place
// of the command's).
#[derive(Args)]
pub struct CreateArgs {
    /// Output format (default: from the file extension).
    #[arg(short = 'f', long)]
    pub format: Option<FormatArg>,
    /// Disk type (default: dynamic, or differencing with --parent).
    #[arg(short = 't', long = "type")]
    pub disk_type: Option<TypeArg>,
    /// Block size of sparse formats, e.g. 2M.
    #[arg(long)]
    pub block_size: Option<String>,
    /// Parent of a differencing image.
    #[arg(long)]
    pub parent: Option<PathBuf>,
    #[command(flatten)]
    pub sectors: SectorArgs,
    /// Replace IMAGE if it exists.
    #[arg(long)]
    pub force: bool,
    /// The new image file (its format from the extension unless -f is given).
    pub image: PathBuf,
    /// Virtual size, e.g. 64M or 10G (taken from the parent for differencing images).
    pub size: Option<String>,
}

// The arguments of `convert`.
#[derive(Args)]
pub struct ConvertArgs {
    /// Output format (default: from DST's extension).
    #[arg(short = 'O', long = "output-format")]
    pub format: Option<FormatArg>,
    /// Output disk type.
    #[arg(short = 't', long = "type")]
    pub disk_type: Option<TypeArg>,
    /// Block size of sparse outputs.
    #[arg(long)]
    pub block_size: Option<String>,
    /// Make DST a differencing image over BASE holding only what differs from it.
    #[arg(short = 'B', long = "base")]
    pub base: Option<PathBuf>,
    #[command(flatten)]
    pub sectors: SectorArgs,
    /// Replace DST if it exists (only a regular file: never a link, device or FIFO).
    #[arg(long)]
    pub force: bool,
    /// Write the raw content in place onto DST, an existing block device or
    /// regular file at least as large as the virtual disk (nothing is
    /// created, truncated or renamed; an interrupted write cannot be undone).
    #[arg(long, conflicts_with_all = ["force", "base", "disk_type", "block_size"])]
    pub device: bool,
    /// Make a cloud-ready fixed VHD (Azure, AWS import): size rounded up to a whole MiB.
    #[arg(long, conflicts_with_all = ["device", "base", "disk_type", "block_size"])]
    pub cloud: bool,
    /// Sync DST to stable storage before renaming it into place.
    #[arg(long)]
    pub sync: bool,
    /// Never show a progress bar.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    #[command(flatten)]
    pub salvage: SalvageArg,
    /// The source image (VHD, VHDX, EVHD or raw; -f names its format).
    pub src: PathBuf,
    /// The new image file (format from its extension unless -O is given), `-` for raw bytes on stdout, or with --device an existing block device or file.
    pub dst: PathBuf,
    #[command(flatten)]
    pub parent: ParentArgs,
    #[command(flatten)]
    pub recipients: RecipientArgs,
    /// Cipher of an EVHD output.
    #[arg(long, default_value = "aes-256-gcm")]
    pub cipher: CipherArg,
}

// The arguments of `serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// The images to serve, one export each.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Listen on this Unix socket (default: a new one in the temporary folder).
    #[arg(long, value_name = "PATH", conflicts_with = "bind")]
    pub socket: Option<PathBuf>,
    /// Listen on TCP at ADDR:PORT instead, e.g. 127.0.0.1:10809 (port 0: any free port).
    #[arg(long, value_name = "ADDR:PORT")]
    pub bind: Option<String>,
    /// Refuse writes (the images are opened read-only).
    #[arg(long)]
    pub read_only: bool,
    /// Name of the export of the image in the same position (default: the file stem); repeatable.
    #[arg(long = "export-name", value_name = "NAME")]
    pub export_name: Vec<String>,
    /// Exit once a client has completed its handshake and every client has disconnected.
    #[arg(long)]
    pub once: bool,
    /// Most clients served at once; more are refused (closed when accepted).
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub max_connections: usize,
    /// Write the server's process id to this file once it listens.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    #[command(flatten)]
    pub parent: ParentArgs,
}

// The arguments of `write`.
#[derive(Args)]
pub struct WriteArgs {
    /// The image to write into.
    pub image: PathBuf,
    /// Offset in the virtual disk, e.g. 0, 1M or 0x100000.
    #[arg(long)]
    pub offset: String,
    /// Take the bytes from this file.
    #[arg(long, conflicts_with = "pattern")]
    pub input: Option<PathBuf>,
    /// Write this byte (e.g. 0xab) LENGTH times.
    #[arg(long, requires = "length")]
    pub pattern: Option<String>,
    /// Number of bytes to write (with --input: at most this many of the file's).
    #[arg(long)]
    pub length: Option<String>,
    /// Do not look for differencing images beside IMAGE that record it
    /// as their parent (and so no longer open, or read changed data,
    /// after the write), nor warn about them.
    #[arg(long)]
    pub no_children_check: bool,
    #[command(flatten)]
    pub parent: ParentArgs,
}

/// `vhdkit compact`.
#[derive(Args)]
pub struct CompactArgs {
    /// The dynamic or differencing image to compact.
    pub image: PathBuf,
    /// Only unlink blocks that read as zeros and punch holes where they
    /// were; nothing moves and the file keeps its length.
    #[arg(long)]
    pub quick: bool,
    /// Print JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub parent: ParentArgs,
}

// The arguments of `resize`.
#[derive(Args)]
pub struct ResizeArgs {
    /// The image to resize in place.
    pub image: PathBuf,
    /// The new virtual size, e.g. 20G or 21474836480.
    #[arg(required_unless_present = "to_minimum", conflicts_with = "to_minimum")]
    pub size: Option<String>,
    /// Allow a size smaller than the current one: never into a partition,
    /// nor over stored data when the disk has no partition table.
    #[arg(long)]
    pub shrink: bool,
    /// Shrink to the end of the last partition (MBR or GPT, with the GPT's
    /// backup after it); implies --shrink.
    #[arg(long)]
    pub to_minimum: bool,
    /// Resize even though differencing images beside IMAGE record it as
    /// their parent (a VHDX's children then no longer open; a shrunk VHD's
    /// children read zeros where its data was cut).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub parent: ParentArgs,
}

#[derive(Subcommand)]
pub enum KeyCmd {
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
pub enum RecipientsCmd {
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
pub struct SectorArgs {
    /// Logical sector size of a VHDX: 512 or 4096 (default 512, or the
    /// source's or parent's).
    #[arg(
        long = "sector-size",
        alias = "logical-sector-size",
        value_name = "BYTES"
    )]
    pub logical: Option<u32>,
    /// Physical sector size of a VHDX: 512 or 4096 (default 4096).
    #[arg(long = "physical-sector-size", value_name = "BYTES")]
    pub physical: Option<u32>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
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
pub enum TypeArg {
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

/// The public half of a key file given on the command line.
fn parse_public_key(s: &str) -> Result<PublicKey, String> {
    KeyFile::read(Path::new(s))
        .map(|k| k.public().clone())
        .map_err(|e| e.to_string())
}

/// A private key given on the command line, loaded while parsing.
fn parse_private_key(s: &str) -> Result<Arc<PrivateKey>, String> {
    KeyFile::read(Path::new(s))
        .and_then(KeyFile::into_private)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// A recipient's key file given on the command line.
pub fn parse_recipient(s: &str) -> Result<RecipientArg, String> {
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

/// A size from the command line (see [`vhdkit::size::parse_size`]); a
/// decimal-looking unit such as `10GB` is read as binary with a note on
/// stderr saying so.
pub fn parse_size(s: &str) -> vhdkit::Result<u64> {
    let n = vhdkit::size::parse_size(s)?;
    if let Some(note) = binary_unit_note(s) {
        eprintln!("vhdkit: note: {note}");
    }
    Ok(n)
}

/// An optional size from the command line.
pub fn parse_opt_size(s: Option<&str>) -> vhdkit::Result<Option<u64>> {
    s.map(parse_size).transpose()
}

/// A byte for `write --pattern`: decimal or `0x` hex.
pub fn parse_byte(s: &str) -> vhdkit::Result<u8> {
    let t = s.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u8::from_str_radix(h, 16),
        None => t.parse::<u8>(),
    };
    r.map_err(|_| {
        Error::invalid_argument(format!("pattern {s:?} is not a byte (0-255 or 0x00-0xff)"))
    })
}

/// An output's format could not be told from its name: say which option
/// names it.
pub fn format_flag_hint(e: Error, flag: &str) -> Error {
    e.with_note(&format!("; pass {flag} raw, vhd, vhdx or evhd"))
}
