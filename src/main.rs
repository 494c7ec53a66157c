//! The `vhdkit` command: a thin layer over the library.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use vhdkit::convert::{self, ImageSpec};
use vhdkit::report::{self, DiskType, Format};
use vhdkit::size::parse_size;
use vhdkit::{Error, ErrorKind, OpenOptions};

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
}

impl ParentArgs {
    fn options(&self) -> OpenOptions {
        OpenOptions::new()
            .ignore_parent_id(self.ignore_parent_id)
            .parent_path(self.parent_file.clone())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Show everything about an image: sizes, type, identity, every header field.
    Info {
        /// Print JSON instead of a summary.
        #[arg(long)]
        json: bool,
        image: PathBuf,
        #[command(flatten)]
        parent: ParentArgs,
    },
    /// Check an image for damage (exit 0 clean, 2 corrupt, 3 leaked space only, 1 could not check).
    Check {
        #[arg(long)]
        json: bool,
        /// Fix what can be fixed safely (checksums, footer copies).
        #[arg(long)]
        repair: bool,
        image: PathBuf,
        #[command(flatten)]
        parent: ParentArgs,
    },
    /// Show where each range of the virtual disk is stored.
    Map {
        #[arg(long)]
        json: bool,
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
        /// Replace DST if it exists.
        #[arg(long)]
        force: bool,
        /// Sync DST to stable storage before renaming it into place.
        #[arg(long)]
        sync: bool,
        /// Never show a progress bar.
        #[arg(short = 'q', long)]
        quiet: bool,
        src: PathBuf,
        dst: PathBuf,
        #[command(flatten)]
        parent: ParentArgs,
    },
    /// Compare the content of two images (exit 0 same, 1 different, 2 error).
    Compare {
        a: PathBuf,
        b: PathBuf,
        #[command(flatten)]
        parent: ParentArgs,
    },
    /// Copy a range of the virtual disk to stdout.
    Read {
        image: PathBuf,
        #[arg(long)]
        offset: String,
        #[arg(long)]
        length: String,
        #[command(flatten)]
        parent: ParentArgs,
    },
    /// Write bytes into the virtual disk.
    Write {
        image: PathBuf,
        #[arg(long)]
        offset: String,
        /// Take the bytes from this file.
        #[arg(long, conflicts_with = "pattern")]
        input: Option<PathBuf>,
        /// Write this byte (e.g. 0xab) LENGTH times.
        #[arg(long, requires = "length")]
        pattern: Option<String>,
        #[arg(long)]
        length: Option<String>,
        #[command(flatten)]
        parent: ParentArgs,
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
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err((e, _)) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err((e, code)) => {
            eprintln!("vhdkit: error: {e}");
            ExitCode::from(code)
        }
    }
}

type Outcome = Result<u8, (Error, u8)>;

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
            let disk = vhdkit::open(&image, &parent.options().allow_missing_parent(true))
                .map_err(fail1)?;
            emit(json, &disk.info(), report::write_info_text)?;
            Ok(0)
        }
        Command::Check {
            json,
            repair,
            image,
            parent,
        } => {
            let r = vhdkit::check(&image, &parent.options(), repair).map_err(fail1)?;
            emit(json, &r, report::write_check_text)?;
            Ok(r.exit_code() as u8)
        }
        Command::Map {
            json,
            image,
            parent,
        } => {
            let disk = vhdkit::open(&image, &parent.options().allow_missing_parent(true))
                .map_err(fail1)?;
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
            let format = output_format(format, &image).map_err(fail1)?;
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
                (Some(p), _) => {
                    spec.parent = Some(p.clone());
                    vhdkit::open(p, &OpenOptions::new())
                        .map_err(fail1)?
                        .virtual_size()
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
            sync,
            quiet,
            src,
            dst,
            parent,
        } => {
            let disk = vhdkit::open(&src, &parent.options()).map_err(fail1)?;
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
                convert::stream_raw(disk.as_ref(), &mut out, &mut tick).map_err(fail1)?;
            } else {
                refuse_same_file(&src, &dst).map_err(fail1)?;
                let format = output_format(format, &dst).map_err(fail1)?;
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
                match base {
                    Some(b) => {
                        refuse_same_file(&b, &dst).map_err(fail1)?;
                        let base_disk = vhdkit::open(&b, &OpenOptions::new()).map_err(fail1)?;
                        spec.disk_type = DiskType::Differencing;
                        spec.parent = Some(b);
                        convert::create_file(&dst, &spec, size, out, |out| {
                            convert::copy_delta(disk.as_ref(), base_disk.as_ref(), out, &mut tick)
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
                            convert::copy_into(disk.as_ref(), out, &mut tick)
                        })
                        .map_err(fail1)?;
                    }
                }
            }
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            Ok(0)
        }
        Command::Compare { a, b, parent } => {
            let opts = parent.options();
            let da = vhdkit::open(&a, &opts).map_err(|e| (e, 2))?;
            let db = vhdkit::open(&b, &opts).map_err(|e| (e, 2))?;
            match convert::first_difference(da.as_ref(), db.as_ref()).map_err(|e| (e, 2))? {
                None => {
                    println!("Images are identical.");
                    Ok(0)
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
                    Ok(1)
                }
            }
        }
        Command::Read {
            image,
            offset,
            length,
            parent,
        } => {
            let disk = vhdkit::open(&image, &parent.options()).map_err(fail1)?;
            let offset = parse_size(&offset).map_err(fail1)?;
            let length = parse_size(&length).map_err(fail1)?;
            vhdkit::disk::check_range(disk.virtual_size(), offset, 0)
                .and_then(|_| {
                    offset
                        .checked_add(length)
                        .filter(|&e| e <= disk.virtual_size())
                        .map(|_| ())
                        .ok_or_else(|| {
                            Error::new(
                                ErrorKind::OutOfBounds,
                                format!(
                                    "range {offset}+{length} lies outside the virtual disk of {} bytes",
                                    disk.virtual_size()
                                ),
                            )
                        })
                })
                .map_err(fail1)?;
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
            Ok(0)
        }
        Command::Write {
            image,
            offset,
            input,
            pattern,
            length,
            parent,
        } => {
            let offset = parse_size(&offset).map_err(fail1)?;
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
                _ => {
                    return Err(fail1(Error::invalid_argument(
                        "give --input FILE or --pattern BYTE --length N",
                    )));
                }
            };
            let mut disk = vhdkit::open(&image, &parent.options().writable(true)).map_err(fail1)?;
            disk.write_at(&data, offset)
                .and_then(|_| disk.flush())
                .map_err(|e| fail1(e.with_path(&image)))?;
            Ok(0)
        }
    }
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

/// A reader that stopped reading our output (`vhdkit ... | head`) is not an error.
fn is_broken_pipe(e: &Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

fn stdout_err(e: std::io::Error) -> (Error, u8) {
    fail1(Error::io(e, "writing to standard output"))
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

/// The output format: `-f`/`-O` if given, else from the extension.
fn output_format(arg: Option<FormatArg>, path: &Path) -> vhdkit::Result<Format> {
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
            "cannot tell the format of {} from its extension; pass -f/-O",
            path.display()
        ))),
    }
}

/// Refuse to write an output over one of the inputs.
fn refuse_same_file(input: &Path, output: &Path) -> vhdkit::Result<()> {
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(input), std::fs::canonicalize(output))
        && a == b
    {
        return Err(Error::invalid_argument(format!(
            "the output {} is also an input",
            output.display()
        )));
    }
    Ok(())
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
