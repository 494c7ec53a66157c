//! Deciding what an output image gets before anything is written: its
//! format (asked for, else from the file name's extension, else the origin
//! an EVHD source records), its type, block size and sector sizes, and
//! whether an EVHD output may be signed.
//!
//! These are rules of the library, not of its command line: the `vhdkit`
//! command parses its arguments into a [`ConvertRequest`] or
//! [`CreateRequest`], asks for the [`ImageSpec`] and hands it to
//! [`super::create_file`]. Error messages here name no command-line
//! option; the command adds that hint.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ImageSpec;
use crate::error::{Error, ErrorKind, Result};
use crate::evhd::EvhdOptions;
use crate::evhd::cipher::CipherId;
use crate::evhd::header::Origin;
use crate::evhd::keys::{PrivateKey, PublicKey};
use crate::report::{DiskType, Format, ImageInfo, WarningKind};

/// File name extensions (lowercase) and the format each names. `avhd` and
/// `avhdx` are Hyper-V's names for differencing (snapshot) images.
const EXTENSIONS: &[(&str, Format)] = &[
    ("vhd", Format::Vhd),
    ("avhd", Format::Vhd),
    ("vhdx", Format::Vhdx),
    ("avhdx", Format::Vhdx),
    ("evhd", Format::Evhd),
    ("raw", Format::Raw),
    ("img", Format::Raw),
    ("bin", Format::Raw),
    ("dd", Format::Raw),
];

/// The logical sector size every format defaults to; a VHDX converted
/// from a source with another one keeps the source's.
const DEFAULT_LOGICAL_SECTOR: u32 = 512;

impl Format {
    /// The format a file's name says it holds, judged by its extension
    /// (case-insensitive): `vhd`/`avhd`, `vhdx`/`avhdx`, `evhd`, and
    /// `raw`, `img`, `bin`, `dd` for raw images. `None` for any other name.
    pub fn from_extension(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_string_lossy().to_ascii_lowercase();
        EXTENSIONS
            .iter()
            .find(|(e, _)| *e == ext)
            .map(|&(_, format)| format)
    }
}

/// The format of a new image at `path`: `requested` when given, else the
/// one its extension names. The error (an invalid argument) says the
/// extension names none; the caller adds how to name one.
pub fn output_format(requested: Option<Format>, path: &Path) -> Result<Format> {
    if let Some(f) = requested {
        return Ok(f);
    }
    Format::from_extension(path).ok_or_else(|| {
        Error::invalid_argument(format!(
            "cannot tell the format of {} from its extension",
            path.display()
        ))
    })
}

/// The format of converting `source` into `dst`: as [`output_format`],
/// except that a destination whose extension names no format gets the
/// format an EVHD source records as its origin (decrypting restores the
/// kind of image that was encrypted), unless that origin is itself EVHD.
pub fn conversion_format(
    requested: Option<Format>,
    dst: &Path,
    source: &ImageInfo,
) -> Result<Format> {
    match (
        output_format(requested, dst),
        origin_of(source).and_then(|o| o.format),
    ) {
        (Ok(f), _) => Ok(f),
        (Err(_), Some(f)) if f != Format::Evhd => Ok(f),
        (Err(e), _) => Err(e),
    }
}

/// `convert --cloud`: the output is a fixed VHD (refused when another
/// format is asked for) whose virtual size, returned with the spec, is the
/// source's `size` rounded up to a whole MiB, as cloud import services
/// (Azure, AWS) need; the bytes added read as zeros.
pub fn cloud_spec(requested: Option<Format>, size: u64) -> Result<(ImageSpec, u64)> {
    if let Some(f) = requested.filter(|&f| f != Format::Vhd) {
        return Err(Error::invalid_argument(format!(
            "--cloud makes a fixed VHD, not {}",
            f.as_str()
        )));
    }
    let mut spec = ImageSpec::new(Format::Vhd);
    spec.disk_type = DiskType::Fixed;
    let rounded = crate::vhd::cloud::cloud_size(size);
    if rounded > crate::vhd::MAX_VIRTUAL_SIZE {
        return Err(Error::invalid_argument(format!(
            "a fixed VHD holds at most {} bytes; the source rounded up to a MiB is {rounded}",
            crate::vhd::MAX_VIRTUAL_SIZE
        )));
    }
    Ok((spec, rounded))
}

/// The origin an EVHD source records (`None` for other sources).
fn origin_of(source: &ImageInfo) -> Option<Origin> {
    Origin::from_info(source)
}

/// What a conversion was asked for; `None` leaves the choice to
/// [`conversion_spec`].
#[derive(Debug, Clone, Default)]
pub struct ConvertRequest {
    /// Output disk type.
    pub disk_type: Option<DiskType>,
    /// Block size of a sparse output.
    pub block_size: Option<u64>,
    /// Logical sector size of the output.
    pub logical_sector_size: Option<u32>,
    /// Physical sector size of the output (VHDX).
    pub physical_sector_size: Option<u32>,
    /// Make the output a differencing image over this base, holding only
    /// what differs from it.
    pub base: Option<PathBuf>,
}

/// The image converting `source` into `format` creates.
///
/// What was asked for wins. Otherwise:
/// - a VHDX output keeps a source's logical sector size other than 512
///   (not with a base: the output takes its base's);
/// - when the output has the format an EVHD source records as its origin,
///   it gets the origin's type, block size (sparse formats) and, for
///   VHDX, physical sector size back;
/// - with a base the output is a differencing image over it.
///
/// The spec's `evhd` is left empty: see [`evhd_output`].
pub fn conversion_spec(format: Format, source: &ImageInfo, request: &ConvertRequest) -> ImageSpec {
    let mut spec = ImageSpec::new(format);
    spec.logical_sector_size = request.logical_sector_size;
    spec.physical_sector_size = request.physical_sector_size;
    if format == Format::Vhdx
        && spec.logical_sector_size.is_none()
        && request.base.is_none()
        && source.logical_sector_size != DEFAULT_LOGICAL_SECTOR
    {
        spec.logical_sector_size = Some(source.logical_sector_size);
    }
    spec.block_size = request.block_size;
    if let Some(t) = request.disk_type {
        spec.disk_type = t;
    }
    if let Some(o) = origin_of(source).filter(|o| o.format == Some(format)) {
        if request.disk_type.is_none()
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
    if let Some(base) = &request.base {
        spec.disk_type = DiskType::Differencing;
        spec.parent = Some(base.clone());
    }
    spec
}

/// Whether `spec` asks for a differencing image without saying over what:
/// a conversion makes one only over a base.
pub fn lacks_parent(spec: &ImageSpec) -> bool {
    spec.disk_type == DiskType::Differencing && spec.parent.is_none()
}

/// The EVHD settings of converting `source` into an EVHD: the recipients,
/// the cipher, the origin the output records (an EVHD source passes its
/// own on) and the signer.
///
/// A signed output vouches for its content with the signer's key, so an
/// EVHD source must be signed by a key the reader trusts (or by the signer
/// itself) and must not have fallen back to its older header copy:
/// otherwise the conversion would launder a forged or rolled-back image
/// into one a reader that requires signatures accepts. Such a source is
/// refused with [`ErrorKind::Untrusted`] or [`ErrorKind::NeedsRepair`].
pub fn evhd_output(
    source: &ImageInfo,
    recipients: Vec<(PublicKey, String)>,
    cipher: CipherId,
    signer: Option<Arc<PrivateKey>>,
) -> Result<EvhdOptions> {
    if let Some(signer) = &signer {
        refuse_to_sign_untrusted(source, signer)?;
    }
    Ok(EvhdOptions {
        recipients,
        cipher,
        origin: Origin::of(source),
        signer,
    })
}

/// See [`evhd_output`].
fn refuse_to_sign_untrusted(src: &ImageInfo, signer: &PrivateKey) -> Result<()> {
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
                "refusing to sign: {why}; the output would be signed by {}, vouching for content nobody you trust wrote",
                signer.fingerprint().short()
            ),
        ));
    }
    if let Some(w) = src
        .warnings
        .iter()
        .find(|w| w.kind == WarningKind::CommitMayBeLost)
    {
        return Err(Error::new(
            ErrorKind::NeedsRepair,
            format!(
                "refusing to sign: {w}; the output would make that state signed by {}",
                signer.fingerprint().short()
            ),
        ));
    }
    Ok(())
}

/// What a new image was asked to be; `None` leaves the choice to
/// [`create_spec`].
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// Disk type.
    pub disk_type: Option<DiskType>,
    /// Block size of a sparse image.
    pub block_size: Option<u64>,
    /// Parent of a differencing image.
    pub parent: Option<PathBuf>,
    /// Logical sector size (default: the parent's, else 512).
    pub logical_sector_size: Option<u32>,
    /// Physical sector size (VHDX).
    pub physical_sector_size: Option<u32>,
}

/// The image creating a new `format` image creates: the type asked for,
/// else differencing when a parent is given, else the format's default.
/// A differencing image has its parent's size (see [`create_size`]).
pub fn create_spec(format: Format, request: &CreateRequest) -> ImageSpec {
    let mut spec = ImageSpec::new(format);
    spec.logical_sector_size = request.logical_sector_size;
    spec.physical_sector_size = request.physical_sector_size;
    spec.block_size = request.block_size;
    spec.disk_type = match (request.disk_type, &request.parent) {
        (Some(t), _) => t,
        (None, Some(_)) => DiskType::Differencing,
        (None, None) => spec.disk_type,
    };
    spec.parent = request.parent.clone();
    spec
}

/// Why a new image's size cannot be decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeProblem {
    /// Neither a size nor a parent to take it from.
    Missing,
    /// A size other than the parent's: a differencing image always has
    /// its parent's size.
    NotTheParents {
        /// The parent's virtual size.
        parent: u64,
        /// The size asked for.
        given: u64,
    },
}

/// The virtual size of a new image: its parent's (`parent_size`), where a
/// `given` size must agree, else the `given` one.
pub fn create_size(
    parent_size: Option<u64>,
    given: Option<u64>,
) -> std::result::Result<u64, SizeProblem> {
    match (parent_size, given) {
        (Some(parent), Some(given)) if given != parent => {
            Err(SizeProblem::NotTheParents { parent, given })
        }
        (Some(parent), _) => Ok(parent),
        (None, Some(given)) => Ok(given),
        (None, None) => Err(SizeProblem::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{
        EvhdDetails, EvhdOriginDetails, EvhdSignatureDetails, FormatDetails, Warning,
    };

    fn info(format: Format, lss: u32) -> ImageInfo {
        ImageInfo {
            format,
            disk_type: DiskType::Dynamic,
            virtual_size: 1 << 20,
            file_size: 1 << 20,
            logical_sector_size: lss,
            physical_sector_size: 4096,
            block_size: None,
            disk_id: None,
            data_write_id: None,
            creator: None,
            minimum_size: None,
            allocated_bytes: 0,
            parent: None,
            warnings: Vec::new(),
            details: FormatDetails::Raw,
        }
    }

    /// An EVHD source whose origin record names `format` and `disk_type`.
    fn evhd_from(format: &str, disk_type: &str) -> ImageInfo {
        let mut i = info(Format::Evhd, 512);
        let format = match format {
            "raw" => Some(Format::Raw),
            "vhd" => Some(Format::Vhd),
            "vhdx" => Some(Format::Vhdx),
            _ => None,
        };
        let disk_type = match disk_type {
            "fixed" => Some(DiskType::Fixed),
            "dynamic" => Some(DiskType::Dynamic),
            _ => Some(DiskType::Differencing),
        };
        i.details = FormatDetails::Evhd(Box::new(EvhdDetails {
            block_size: 1 << 20,
            cipher: "aes-256-gcm",
            container_id: uuid::Uuid::nil(),
            header_copy: "A",
            key_epoch: 0,
            live_epochs: 1,
            locked: true,
            origin: EvhdOriginDetails {
                block_size: Some(1 << 20),
                disk_id: None,
                format,
                logical_sector_size: 512,
                physical_sector_size: 512,
                disk_type,
            },
            recipients: Vec::new(),
            rekey_in_progress: false,
            sequence: 1,
            signature: EvhdSignatureDetails::Unsigned {
                signed: false,
                warning: None,
            },
            unlocked_with: None,
            version: 1,
        }));
        i
    }

    #[test]
    fn extensions_name_formats() {
        let f = |p: &str| Format::from_extension(Path::new(p));
        assert_eq!(f("a.vhd"), Some(Format::Vhd));
        assert_eq!(f("a.AVHD"), Some(Format::Vhd));
        assert_eq!(f("dir/a.VhDx"), Some(Format::Vhdx));
        assert_eq!(f("a.avhdx"), Some(Format::Vhdx));
        assert_eq!(f("a.evhd"), Some(Format::Evhd));
        for raw in ["a.raw", "a.img", "a.bin", "a.DD"] {
            assert_eq!(f(raw), Some(Format::Raw), "{raw}");
        }
        assert_eq!(f("a.qcow2"), None);
        assert_eq!(f("vhd"), None);
        assert_eq!(f("a.vhd.tmp"), None);
    }

    #[test]
    fn requested_format_wins_over_extension() {
        let p = Path::new("out.vhd");
        assert_eq!(output_format(Some(Format::Raw), p).unwrap(), Format::Raw);
        assert_eq!(output_format(None, p).unwrap(), Format::Vhd);
        let e = output_format(None, Path::new("out.data")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.message().contains("out.data"), "{e}");
    }

    #[test]
    fn evhd_origin_decides_an_unknown_extension() {
        let src = evhd_from("vhdx", "fixed");
        let dst = Path::new("plain.out");
        assert_eq!(conversion_format(None, dst, &src).unwrap(), Format::Vhdx);
        // The extension still wins over the origin.
        assert_eq!(
            conversion_format(None, Path::new("x.vhd"), &src).unwrap(),
            Format::Vhd
        );
        // A plain source has no origin to fall back on.
        assert!(conversion_format(None, dst, &info(Format::Vhd, 512)).is_err());
        // Nor does an EVHD that records no origin format.
        assert!(conversion_format(None, dst, &evhd_from("none", "fixed")).is_err());
    }

    #[test]
    fn origin_restores_type_and_block_size() {
        let src = evhd_from("vhdx", "fixed");
        let spec = conversion_spec(Format::Vhdx, &src, &ConvertRequest::default());
        assert_eq!(spec.disk_type, DiskType::Fixed);
        assert_eq!(spec.block_size, Some(1 << 20));
        assert_eq!(spec.physical_sector_size, Some(512));
        // What was asked for wins.
        let asked = ConvertRequest {
            disk_type: Some(DiskType::Dynamic),
            block_size: Some(2 << 20),
            physical_sector_size: Some(4096),
            ..Default::default()
        };
        let spec = conversion_spec(Format::Vhdx, &src, &asked);
        assert_eq!(spec.disk_type, DiskType::Dynamic);
        assert_eq!(spec.block_size, Some(2 << 20));
        assert_eq!(spec.physical_sector_size, Some(4096));
        // Another format than the origin's gets its own defaults.
        let spec = conversion_spec(Format::Vhd, &src, &ConvertRequest::default());
        assert_eq!(spec.disk_type, DiskType::Dynamic);
        assert_eq!(spec.block_size, None);
        // A raw output takes no block size.
        let spec = conversion_spec(
            Format::Raw,
            &evhd_from("raw", "fixed"),
            &ConvertRequest::default(),
        );
        assert_eq!(spec.block_size, None);
    }

    #[test]
    fn vhdx_keeps_a_4k_source_sector_size_unless_based() {
        let src = info(Format::Vhdx, 4096);
        let spec = conversion_spec(Format::Vhdx, &src, &ConvertRequest::default());
        assert_eq!(spec.logical_sector_size, Some(4096));
        let spec = conversion_spec(Format::Vhd, &src, &ConvertRequest::default());
        assert_eq!(spec.logical_sector_size, None);
        let based = ConvertRequest {
            base: Some(PathBuf::from("base.vhdx")),
            ..Default::default()
        };
        let spec = conversion_spec(Format::Vhdx, &src, &based);
        assert_eq!(spec.logical_sector_size, None);
        assert_eq!(spec.disk_type, DiskType::Differencing);
        assert_eq!(spec.parent.as_deref(), Some(Path::new("base.vhdx")));
        assert!(!lacks_parent(&spec));
    }

    #[test]
    fn differencing_without_base_lacks_a_parent() {
        let asked = ConvertRequest {
            disk_type: Some(DiskType::Differencing),
            ..Default::default()
        };
        let spec = conversion_spec(Format::Vhd, &info(Format::Raw, 512), &asked);
        assert!(lacks_parent(&spec));
    }

    #[test]
    fn create_defaults_to_differencing_with_a_parent() {
        let spec = create_spec(Format::Vhd, &CreateRequest::default());
        assert_eq!(spec.disk_type, DiskType::Dynamic);
        assert_eq!(
            create_spec(Format::Raw, &CreateRequest::default()).disk_type,
            DiskType::Fixed
        );
        let with_parent = CreateRequest {
            parent: Some(PathBuf::from("p.vhd")),
            ..Default::default()
        };
        let spec = create_spec(Format::Vhd, &with_parent);
        assert_eq!(spec.disk_type, DiskType::Differencing);
        assert!(!lacks_parent(&spec));
    }

    #[test]
    fn a_differencing_image_has_its_parents_size() {
        assert_eq!(create_size(Some(10), None), Ok(10));
        assert_eq!(create_size(Some(10), Some(10)), Ok(10));
        assert_eq!(
            create_size(Some(10), Some(20)),
            Err(SizeProblem::NotTheParents {
                parent: 10,
                given: 20
            })
        );
        assert_eq!(create_size(None, Some(20)), Ok(20));
        assert_eq!(create_size(None, None), Err(SizeProblem::Missing));
    }

    #[test]
    fn signing_needs_a_trusted_evhd_source() {
        let signer = Arc::new(PrivateKey::generate(2048).unwrap());
        let recipients = vec![(signer.public().clone(), "me".to_string())];
        // A plain source carries no signature to trust.
        let plain = info(Format::Vhd, 512);
        let o = evhd_output(
            &plain,
            recipients.clone(),
            CipherId::Aes256Gcm,
            Some(signer.clone()),
        )
        .unwrap();
        assert_eq!(o.origin.format, Some(Format::Vhd));
        // An unsigned EVHD source is not signed over.
        let unsigned = evhd_from("vhd", "dynamic");
        let e = evhd_output(
            &unsigned,
            recipients.clone(),
            CipherId::Aes256Gcm,
            Some(signer.clone()),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Untrusted);
        // Without a signer the output is unsigned and nothing is refused.
        let o = evhd_output(&unsigned, recipients.clone(), CipherId::Aes256Gcm, None).unwrap();
        assert_eq!(o.origin.format, Some(Format::Vhd));
        // A source the signer signed itself may be signed over, unless it
        // fell back to its older header copy.
        let mut own = evhd_from("vhd", "dynamic");
        if let FormatDetails::Evhd(d) = &mut own.details {
            d.signature = EvhdSignatureDetails::Signed {
                signed: true,
                signer: signer.fingerprint().hex(),
                signer_label: String::new(),
                signer_short: signer.fingerprint().short(),
                trusted: false,
                verified: "signature only (without a key the header MAC was not checked)",
                warning: None,
            };
        }
        evhd_output(
            &own,
            recipients.clone(),
            CipherId::Aes256Gcm,
            Some(signer.clone()),
        )
        .unwrap();
        own.warnings.push(Warning::new(
            WarningKind::CommitMayBeLost,
            format!("{}: using copy 2", crate::evhd::fallback::FELL_BACK),
        ));
        let e = evhd_output(&own, recipients, CipherId::Aes256Gcm, Some(signer)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NeedsRepair);
    }
}
