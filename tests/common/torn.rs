//! Fault-injecting storages of the EVHD crash, fallback and drop tests: one
//! that stops persisting at its N-th operation, tearing that write in half,
//! and one whose writes fail while a switch is on.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vhdkit::{MemStorage, Storage};

/// Storage that persists its first `limit - 1` writes and flushes, half of
/// the `limit`-th write (if it is a write), and nothing after: every later
/// operation fails, as if the machine had stopped.
pub struct Faulty {
    pub data: Mutex<Vec<u8>>,
    /// Writes, length changes and flushes so far.
    pub ops: AtomicU64,
    pub limit: u64,
}

impl Faulty {
    pub fn new(data: Vec<u8>, limit: u64) -> Arc<Self> {
        Arc::new(Faulty {
            data: Mutex::new(data),
            ops: AtomicU64::new(0),
            limit,
        })
    }
    fn crashed() -> io::Error {
        io::Error::other("injected crash")
    }
    /// What the storage holds now.
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.lock().unwrap().clone()
    }
}

/// A `Storage` handle on a shared [`Faulty`].
pub struct Handle(pub Arc<Faulty>);

impl Storage for Handle {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.0.data.lock().unwrap();
        let s = offset as usize;
        if s + buf.len() > d.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.copy_from_slice(&d[s..s + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let n = self.0.ops.fetch_add(1, Ordering::SeqCst) + 1;
        if n > self.0.limit {
            return Err(Faulty::crashed());
        }
        let keep = if n == self.0.limit {
            buf.len() / 2
        } else {
            buf.len()
        };
        let mut d = self.0.data.lock().unwrap();
        let s = offset as usize;
        if d.len() < s + keep {
            d.resize(s + keep, 0);
        }
        d[s..s + keep].copy_from_slice(&buf[..keep]);
        if n == self.0.limit {
            return Err(Faulty::crashed());
        }
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.data.lock().unwrap().len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let n = self.0.ops.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.0.limit {
            return Err(Faulty::crashed());
        }
        self.0.data.lock().unwrap().resize(len as usize, 0);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        let n = self.0.ops.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.0.limit {
            return Err(Faulty::crashed());
        }
        Ok(())
    }
    fn is_writable(&self) -> bool {
        true
    }
}

/// Memory storage whose writes (and, with `flushes_fail`, flushes) fail
/// with `message` while `failing` is set, without tearing anything. Only
/// writes that reach past `fail_from` fail, unless it is 0 (then every
/// write does).
pub struct Failing {
    pub mem: MemStorage,
    pub failing: AtomicBool,
    pub fail_from: AtomicU64,
    flushes_fail: bool,
    message: &'static str,
}

impl Failing {
    /// Not failing yet; `fail_from` 0.
    pub fn new(mem: MemStorage, message: &'static str, flushes_fail: bool) -> Arc<Self> {
        Arc::new(Failing {
            mem,
            failing: false.into(),
            fail_from: AtomicU64::new(0),
            flushes_fail,
            message,
        })
    }
    fn error(&self) -> io::Error {
        io::Error::other(self.message)
    }
}

impl Storage for Failing {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.mem.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let from = self.fail_from.load(Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) && (from == 0 || offset + buf.len() as u64 > from) {
            return Err(self.error());
        }
        self.mem.write_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        self.mem.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.mem.set_len(len)
    }
    fn flush(&self) -> io::Result<()> {
        if self.flushes_fail && self.failing.load(Ordering::SeqCst) {
            return Err(self.error());
        }
        self.mem.flush()
    }
    fn is_writable(&self) -> bool {
        true
    }
}
