//! What every image fuzz target does with an input once its format's
//! checker has run: open it, describe it, map it and read it (bounded).

use vhdkit::OpenOptions;
use vhdkit::io::MemStorage;
use vhdkit::parent::Chain;

/// Open `data` as an image with `opts`; if it opens, run info, map and read
/// up to `read_limit` bytes of the virtual disk. Errors are fine; panics,
/// hangs and runaway allocations are what the fuzzer looks for.
pub fn exercise(data: &[u8], opts: &OpenOptions, read_limit: u64) {
    let storage = Box::new(MemStorage::read_only(data.to_vec()));
    let Ok(disk) = vhdkit::open_storage(storage, None, opts, &Chain::default()) else {
        return;
    };
    let _ = disk.info();
    let size = disk.virtual_size();
    let _ = disk.map(0, size);
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < size.min(read_limit) {
        let n = (size - pos).min(buf.len() as u64) as usize;
        let _ = disk.read_at(&mut buf[..n], pos);
        pos += n as u64;
    }
}
