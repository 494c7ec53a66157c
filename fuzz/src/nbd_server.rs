//! The `nbd_server` target: arbitrary bytes as everything a client sends
//! to the NBD server (handshake, options, requests, write payloads), over
//! a writable and a read-only export of small in-memory disks. The server
//! must answer or close, never panic, hang or allocate beyond its bounds.
//! Requests run on the reading thread (no workers), so a run is
//! deterministic.

use std::io::{Cursor, Write};

use vhdkit::MemStorage;
use vhdkit::nbd::{Export, ServeOptions, Server};
use vhdkit::report::Format;
use vhdkit::unstable::chain::Chain;
use vhdkit::{Disk, OpenOptions};

/// Size of each served disk.
const DISK: usize = 64 << 10;

/// Replies go nowhere, but are counted so that writing them is not
/// optimised away; a client that never reads is another test.
struct Sink(u64);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn raw_disk(writable: bool) -> Disk {
    let mut data = vec![0u8; DISK];
    data[DISK / 2..DISK / 2 + 4096].fill(0x5a);
    let storage = if writable {
        MemStorage::from_vec(data)
    } else {
        MemStorage::read_only(data)
    };
    let opts = OpenOptions::new()
        .writable(writable)
        .format(Some(Format::Raw));
    let inner = vhdkit::unstable::open_storage(Box::new(storage), None, &opts, &Chain::default())
        .expect("a raw disk in memory opens");
    Disk::new(inner, None)
}

/// Serve one connection whose client sent `data`.
pub fn run_bytes(data: &[u8]) {
    let exports = vec![
        Export::new("rw", raw_disk(true), false).expect("export"),
        Export::new("ro", raw_disk(false), true).expect("export"),
    ];
    let server = Server::new(exports, ServeOptions::new().workers(0)).expect("server");
    let mut out = Sink(0);
    server.serve_connection(Cursor::new(data), &mut out);
    let _ = server.flush();
    for mut d in server.into_disks() {
        let _ = d.close();
    }
}
