//! `fs_list`: arbitrary bytes (or the sparse form) as a bare file system
//! of each kind vhdkit reads (ext2/3/4, NTFS, FAT): open it, walk the
//! tree, stat every entry and read every file into a bounded sink.
//! Errors are fine; panics (outside the crates' guarded calls, which turn
//! theirs into errors), hangs and runaway allocations are what the fuzzer
//! looks for.

use std::io::{self, Write};
use std::sync::Arc;

use vhdkit::fs::{EntryType, FsKind, Volume, Window};
use vhdkit::unstable::chain::Chain;
use vhdkit::{MemStorage, OpenOptions, VirtualDisk};

/// Entries one input may visit (the library's own bound is far larger).
const MAX_ENTRIES: usize = 2_000;

/// Bytes of one file read per input.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// A sink that refuses more than [`MAX_FILE_BYTES`].
struct Bounded(u64);

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        if self.0 > MAX_FILE_BYTES {
            return Err(io::Error::other("enough"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub fn run_bytes(data: &[u8]) {
    let file = Arc::new(MemStorage::read_only(super::image_bytes(data)));
    let opts = OpenOptions::new().format(Some(vhdkit::Format::Raw));
    let Ok(disk) = vhdkit::unstable::open_storage(Box::new(file), None, &opts, &Chain::default())
    else {
        return;
    };
    let disk: Arc<dyn VirtualDisk> = Arc::from(disk);
    let size = disk.virtual_size();
    for kind in [FsKind::Ext4, FsKind::Ntfs, FsKind::Fat32] {
        let Some(w) = Window::new(disk.clone(), 0, size) else {
            return;
        };
        let Ok(mut vol) = Volume::open_as(w, "fuzz", kind) else {
            continue;
        };
        let mut seen = 0usize;
        let _ = vol.walk("/", &mut |vol, rel, e| {
            seen += 1;
            if seen > MAX_ENTRIES {
                return Err(vhdkit::Error::invalid_argument("enough"));
            }
            let _ = vol.stat(&rel.join("/"));
            if e.kind == EntryType::File {
                let _ = vol.read_components(rel, None, &mut Bounded(0));
                for s in &e.streams {
                    let _ = vol.read_components(rel, Some(&s.name), &mut Bounded(0));
                }
            }
            Ok(())
        });
    }
}
