//! Whether a VHD is what the cloud import services take (Azure's and
//! AWS's VM import): a fixed VHD whose virtual size is a whole number of
//! MiB, with a valid footer at the very end of the file, right after the
//! data. Creator fields do not matter.

use super::FooterSource;
use super::footer::{FOOTER_SIZE, Footer, VhdType};

/// The virtual size of a cloud-ready VHD is a multiple of this (1 MiB).
pub const CLOUD_ALIGNMENT: u64 = 1 << 20;

/// `size` rounded up to [`CLOUD_ALIGNMENT`].
pub fn cloud_size(size: u64) -> u64 {
    size.div_ceil(CLOUD_ALIGNMENT) * CLOUD_ALIGNMENT
}

/// What keeps the VHD with `footer` (found at `source`) in a file of
/// `file_size` bytes from being cloud ready; empty when it is ready.
pub fn cloud_problems(footer: &Footer, source: FooterSource, file_size: u64) -> Vec<String> {
    let mut p = Vec::new();
    if footer.vhd_type() != Some(VhdType::Fixed) {
        p.push("not a fixed VHD (convert --cloud makes one)".to_string());
    }
    let size = footer.current_size;
    if !size.is_multiple_of(CLOUD_ALIGNMENT) {
        p.push(format!(
            "virtual size {size} is not a whole number of MiB (convert --cloud rounds it up to {})",
            cloud_size(size)
        ));
    }
    if source != FooterSource::End || !footer.checksum_ok() {
        p.push("the footer at the end of the file is missing or damaged".to_string());
    }
    if footer.vhd_type() == Some(VhdType::Fixed) && file_size != size + FOOTER_SIZE as u64 {
        p.push(format!(
            "file of {file_size} bytes is not the {size} data bytes followed by the 512-byte footer"
        ));
    }
    p
}
