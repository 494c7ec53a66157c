//! Reads 4 KiB at a fixed stride that scatters the reads over the whole
//! virtual disk, through the library, and prints the reads per second.
//!
//! `cargo run --release --example strided_reads -- IMAGE [COUNT]`
//!
//! `benches/revisions.sh` builds this example in two revisions of the
//! tree and runs them alternately on the same images, to compare the
//! library's random-read path between the revisions.

use std::time::Instant;

/// A stride, coprime with every power of two, that visits the disk in a
/// scattered order.
const STRIDE: u64 = 7_919 * 4096 + 4096;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: strided_reads IMAGE [COUNT]")?;
    let count: u64 = args.next().map_or(Ok(200_000), |c| c.parse())?;
    let disk = vhdkit::open(&path, &vhdkit::OpenOptions::default())?;
    let slots = disk.virtual_size() / 4096;
    let mut buf = vec![0u8; 4096];
    let mut sum = 0u64;
    let start = Instant::now();
    for i in 0..count {
        let offset = (i * (STRIDE / 4096) % slots) * 4096;
        disk.read_at(&mut buf, offset)?;
        sum = sum.wrapping_add(u64::from(buf[0]));
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:.6} s {:.0} reads/s (checksum {sum})",
        secs,
        count as f64 / secs
    );
    Ok(())
}
