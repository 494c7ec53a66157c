//! The transmission phase of one connection: a reader (the connection's
//! thread) parses requests and reads write payloads, workers execute them,
//! and replies are written whole under one lock, in whatever order the
//! requests finish.
//!
//! Bounds: a request's payload is at most [`MAX_PAYLOAD`]; the buffers of a
//! connection's requests in flight (write payloads, read replies) stay
//! within the connection's buffer budget and, with those of every other
//! connection, within the server's (reading the next request waits);
//! at most `queue` requests wait for a worker.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Condvar, Mutex};

use super::handshake::Negotiated;
use super::proto::*;
use super::{Export, ServeOptions};
use crate::disk::{Extent, ExtentKind};
use crate::error::{Error, ErrorKind};
use crate::handle::Disk;

/// Bytes of zeros written per step for `NBD_CMD_WRITE_ZEROES` with
/// `NBD_CMD_FLAG_NO_HOLE`.
const ZERO_CHUNK: usize = 1 << 20;

/// Write payloads up to this size are read into a buffer of their full
/// size at once; larger ones grow as their bytes arrive.
const PAYLOAD_STEP: usize = 1 << 20;

/// Reads shorter than this are sent as one data chunk without asking the
/// allocation map (a map lookup costs more than the bytes it could save).
const SPARSE_READ_MIN: usize = 64 << 10;

/// A counting semaphore of buffer bytes, which remembers the most ever
/// taken at once.
pub(super) struct Budget {
    left: Mutex<u64>,
    freed: Condvar,
    total: u64,
    peak: std::sync::atomic::AtomicU64,
}

impl Budget {
    pub(super) fn new(bytes: u64) -> Self {
        Budget {
            left: Mutex::new(bytes),
            freed: Condvar::new(),
            total: bytes,
            peak: Default::default(),
        }
    }

    /// Wait until `n` bytes are free and take them.
    fn take(&self, n: u64) {
        let mut left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        while *left < n {
            left = self.freed.wait(left).unwrap_or_else(|e| e.into_inner());
        }
        *left -= n;
        self.peak.fetch_max(self.total - *left, Ordering::SeqCst);
    }

    /// The most bytes ever taken at once.
    pub(super) fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    fn give(&self, n: u64) {
        *self.left.lock().unwrap_or_else(|e| e.into_inner()) += n;
        self.freed.notify_all();
    }
}

/// A request read from the client, with its payload.
struct Job {
    req: Request,
    data: Vec<u8>,
    /// Budget bytes to give back once the reply is written.
    held: u64,
}

/// What the workers of one connection share.
struct Conn<'a, W: Write> {
    out: Mutex<W>,
    export: &'a Export,
    structured: bool,
    allocation: bool,
    budget: Budget,
    /// The budget of the whole server, shared with other connections.
    shared: &'a Budget,
    /// A reply could not be written: the client is gone.
    broken: AtomicBool,
    /// Something was written to the disk through this connection.
    wrote: AtomicBool,
}

/// The outcome of a command: done (with its reply sent, or to be
/// acknowledged with an empty reply), or an error to send.
type Reply = Result<Replied, (u32, String)>;

/// Whether a command sent its own reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replied {
    /// Acknowledge with an empty reply.
    No,
    /// The reply is sent.
    Yes,
}

/// Serve requests from `r` until the client disconnects, breaks framing
/// or a reply cannot be written; then flush the disk if this connection
/// wrote to it.
pub fn transmit<R: Read, W: Write + Send>(
    r: &mut R,
    w: W,
    neg: Negotiated,
    opts: &ServeOptions,
    shared: &Budget,
) {
    let conn = Conn {
        out: Mutex::new(w),
        export: &neg.export,
        structured: neg.structured,
        allocation: neg.allocation,
        budget: Budget::new(opts.buffer_budget),
        shared,
        broken: AtomicBool::new(false),
        wrote: AtomicBool::new(false),
    };
    if opts.workers == 0 {
        while let Some(job) = next_job(r, &conn) {
            conn.execute(job);
        }
    } else {
        let (tx, rx) = sync_channel::<Job>(opts.queue);
        let rx = Mutex::new(rx);
        std::thread::scope(|scope| {
            for _ in 0..opts.workers {
                scope.spawn(|| work(&rx, &conn));
            }
            while let Some(job) = next_job(r, &conn) {
                if tx.send(job).is_err() {
                    break;
                }
            }
            drop(tx);
        });
    }
    if conn.wrote.load(Ordering::SeqCst)
        && let Ok(mut d) = conn.export.write()
    {
        let _ = d.flush();
    }
}

/// A worker: execute jobs until the reader is done.
fn work<W: Write + Send>(rx: &Mutex<Receiver<Job>>, conn: &Conn<'_, W>) {
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => conn.execute(job),
            Err(_) => return,
        }
    }
}

/// Read the next request and its payload; `None` ends the connection
/// (end of stream, `NBD_CMD_DISC`, broken framing, a dead client).
fn next_job<R: Read, W: Write>(r: &mut R, conn: &Conn<'_, W>) -> Option<Job> {
    if conn.broken.load(Ordering::SeqCst) {
        return None;
    }
    let head: [u8; REQUEST_LEN] = read_array(r).ok()?;
    // Out of step: nothing after it can be trusted.
    let req = Request::parse(&head).ok()?;
    let held = match req.kind {
        CMD_DISC => return None,
        CMD_WRITE => {
            if req.length > MAX_PAYLOAD {
                // Its payload cannot be skipped at a bounded cost.
                conn.fail(
                    &req,
                    EINVAL,
                    format!("a write of {} bytes (at most {MAX_PAYLOAD})", req.length),
                );
                return None;
            }
            u64::from(req.length)
        }
        CMD_READ if req.length <= MAX_PAYLOAD => u64::from(req.length),
        _ => 0,
    };
    // The connection's own budget first: a connection waiting for the
    // server's holds at most one request's worth of it.
    conn.budget.take(held);
    conn.shared.take(held);
    let mut data = Vec::new();
    if req.kind == CMD_WRITE {
        // Grown as the bytes arrive: a client that announces a payload and
        // sends less makes the server hold only what it sent.
        data.reserve_exact((req.length as usize).min(PAYLOAD_STEP));
        let got = r.by_ref().take(held).read_to_end(&mut data);
        if got.is_err() || data.len() as u64 != held {
            conn.shared.give(held);
            conn.budget.give(held);
            return None;
        }
    }
    Some(Job { req, data, held })
}

/// The NBD error for a library error.
fn errno(e: &Error) -> u32 {
    match e.kind() {
        ErrorKind::ReadOnly => EPERM,
        ErrorKind::InvalidArgument | ErrorKind::OutOfBounds => EINVAL,
        ErrorKind::Io => {
            let code = std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<io::Error>())
                .and_then(io::Error::raw_os_error);
            // ENOSPC, EDQUOT and EFBIG are all "no space" to a client.
            if matches!(code, Some(28 | 122 | 27)) {
                ENOSPC
            } else {
                EIO
            }
        }
        _ => EIO,
    }
}

fn lib_err(e: Error) -> (u32, String) {
    (errno(&e), e.to_string())
}

/// The command flags each command accepts (FUA is valid on all).
fn allowed_flags(kind: u16, structured: bool) -> Option<u16> {
    Some(match kind {
        CMD_READ if structured => CMD_FLAG_FUA | CMD_FLAG_DF,
        CMD_READ => CMD_FLAG_FUA,
        CMD_WRITE | CMD_FLUSH | CMD_TRIM | CMD_CACHE => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        CMD_BLOCK_STATUS => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
        _ => return None,
    })
}

impl<W: Write> Conn<'_, W> {
    /// Execute `job`, write its reply, give its budget back.
    fn execute(&self, job: Job) {
        let held = job.held;
        let req = job.req;
        let result = self.checked(&req).and_then(|_| self.run(&req, job.data));
        match result {
            Ok(Replied::Yes) => {}
            Ok(Replied::No) => self.send(&[&simple_reply(0, req.cookie)]),
            Err((code, msg)) => self.fail(&req, code, msg),
        }
        self.shared.give(held);
        self.budget.give(held);
    }

    /// Refuse what no command may ask: unknown commands and flags, writes
    /// to a read-only export, ranges outside the export.
    fn checked(&self, req: &Request) -> Reply {
        let Some(allowed) = allowed_flags(req.kind, self.structured) else {
            return Err((EINVAL, format!("unknown command {}", req.kind)));
        };
        if req.flags & !allowed != 0 {
            return Err((
                EINVAL,
                format!(
                    "flags {:#x} are not valid for command {}",
                    req.flags, req.kind
                ),
            ));
        }
        let writes = matches!(req.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
        if writes && self.export.read_only {
            return Err((EPERM, "the export is read-only".into()));
        }
        if req.kind == CMD_FLUSH {
            return Ok(Replied::No);
        }
        let size = self.export.size;
        let end = req.offset.checked_add(u64::from(req.length));
        if end.is_none_or(|e| e > size) {
            let code = if writes && req.kind != CMD_TRIM {
                ENOSPC
            } else {
                EINVAL
            };
            return Err((
                code,
                format!(
                    "{} bytes at offset {:#x} reach past the end of the export ({size:#x})",
                    req.length, req.offset
                ),
            ));
        }
        Ok(Replied::No)
    }

    /// Execute a checked request; reads and block status send their own
    /// replies (and so return `Ok` after sending, or an error to send).
    fn run(&self, req: &Request, mut data: Vec<u8>) -> Reply {
        let (off, len) = (req.offset, u64::from(req.length));
        let fua = req.flags & CMD_FLAG_FUA != 0;
        match req.kind {
            CMD_READ => return self.read(req),
            CMD_BLOCK_STATUS => return self.block_status(req),
            CMD_CACHE => return Ok(Replied::No),
            CMD_FLUSH => {
                let mut d = self.export.write().map_err(lib_err)?;
                d.flush().map_err(lib_err)?;
                return Ok(Replied::No);
            }
            _ => {}
        }
        if len == 0 {
            return Ok(Replied::No);
        }
        let mut d = self.export.write().map_err(lib_err)?;
        self.wrote.store(true, Ordering::SeqCst);
        match req.kind {
            CMD_WRITE => write(&mut d, &mut data, off),
            CMD_WRITE_ZEROES if req.flags & CMD_FLAG_NO_HOLE != 0 => write_zeros(&mut d, off, len),
            CMD_WRITE_ZEROES => d.write_zeroes(off, len),
            CMD_TRIM if self.export.can_discard => d.discard(off, len).map(|_| ()),
            // A trim is a hint; formats that keep their blocks ignore it.
            _ => Ok(()),
        }
        .map_err(lib_err)?;
        if fua {
            d.flush().map_err(lib_err)?;
        }
        Ok(Replied::No)
    }

    /// `NBD_CMD_READ`: the data, as a simple reply or as data and hole
    /// chunks from the allocation map.
    fn read(&self, req: &Request) -> Reply {
        if req.length > MAX_PAYLOAD {
            return Err((
                EINVAL,
                format!("a read of {} bytes (at most {MAX_PAYLOAD})", req.length),
            ));
        }
        let (off, len) = (req.offset, req.length as usize);
        let mut buf = vec![0u8; len];
        let map = {
            let d = self.export.read().map_err(lib_err)?;
            // A raw file opened read-only is a mapping of its bytes: copy
            // them from there rather than through the file's hole-aware
            // reads, which suit whole-disk copies, not scattered requests.
            let mapped = crate::VirtualDisk::fast_paths(&*d).and_then(|f| f.mapped(off, len));
            match mapped {
                Some(m) if m.len() == len => buf.copy_from_slice(m),
                _ => d.read_at(&mut buf, off).map_err(lib_err)?,
            }
            if self.structured && req.flags & CMD_FLAG_DF == 0 && len >= SPARSE_READ_MIN {
                d.map(off, len as u64).ok()
            } else {
                None
            }
        };
        let cookie = req.cookie;
        if !self.structured {
            self.send(&[&simple_reply(0, cookie), &buf]);
            return Ok(Replied::Yes);
        }
        if len == 0 {
            // A chunk must describe at least one byte.
            let h = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0);
            self.send(&[&h]);
            return Ok(Replied::Yes);
        }
        let runs = match map {
            Some(m) => content_runs(&m, off, &buf),
            None => vec![(off, len as u64, false)],
        };
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let last = runs.len() - 1;
        let mut ok = true;
        for (i, &(start, n, hole)) in runs.iter().enumerate() {
            let flags = if i == last { REPLY_FLAG_DONE } else { 0 };
            let r = if hole {
                let mut p = [0u8; 12];
                p[..8].copy_from_slice(&start.to_be_bytes());
                p[8..].copy_from_slice(&(n as u32).to_be_bytes());
                out.write_all(&chunk_header(flags, REPLY_TYPE_OFFSET_HOLE, cookie, 12))
                    .and_then(|()| out.write_all(&p))
            } else {
                let at = (start - off) as usize;
                let h = chunk_header(flags, REPLY_TYPE_OFFSET_DATA, cookie, 8 + n as u32);
                out.write_all(&h)
                    .and_then(|()| out.write_all(&start.to_be_bytes()))
                    .and_then(|()| out.write_all(&buf[at..at + n as usize]))
            };
            if r.is_err() {
                ok = false;
                break;
            }
        }
        if !ok || out.flush().is_err() {
            self.broken.store(true, Ordering::SeqCst);
        }
        Ok(Replied::Yes)
    }

    /// `NBD_CMD_BLOCK_STATUS` for `base:allocation`.
    fn block_status(&self, req: &Request) -> Reply {
        if !self.allocation {
            return Err((EINVAL, "no metadata context was selected".into()));
        }
        if req.length == 0 {
            return Err((EINVAL, "block status of 0 bytes".into()));
        }
        let extents = {
            let d = self.export.read().map_err(lib_err)?;
            d.resolved_map(req.offset, u64::from(req.length))
                .map_err(lib_err)?
        };
        let mut desc: Vec<(u32, u32)> = Vec::new();
        for e in &extents {
            let flags = match e.kind {
                ExtentKind::Zero => STATE_HOLE | STATE_ZERO,
                // Stored somewhere in the chain, or in a parent that is not
                // open: allocated as far as the client is told.
                ExtentKind::Data | ExtentKind::Parent => 0,
            };
            // Extents lie inside the request, whose length is a u32.
            let n = e.length as u32;
            match desc.last_mut() {
                Some(last) if last.1 == flags => last.0 += n,
                _ => desc.push((n, flags)),
            }
        }
        if desc.is_empty() {
            desc.push((req.length, 0));
        }
        if req.flags & CMD_FLAG_REQ_ONE != 0 {
            desc.truncate(1);
        }
        desc.truncate(MAX_EXTENTS);
        let mut p = Vec::with_capacity(4 + 8 * desc.len());
        p.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
        for (n, f) in desc {
            p.extend_from_slice(&n.to_be_bytes());
            p.extend_from_slice(&f.to_be_bytes());
        }
        let h = chunk_header(
            REPLY_FLAG_DONE,
            REPLY_TYPE_BLOCK_STATUS,
            req.cookie,
            p.len() as u32,
        );
        self.send(&[&h, &p]);
        Ok(Replied::Yes)
    }

    /// Send an error reply for `req`.
    fn fail(&self, req: &Request, code: u32, msg: String) {
        if self.structured {
            let msg = wire_string(&msg).as_bytes();
            let mut p = Vec::with_capacity(6 + msg.len());
            p.extend_from_slice(&code.to_be_bytes());
            p.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            p.extend_from_slice(msg);
            let h = chunk_header(
                REPLY_FLAG_DONE,
                REPLY_TYPE_ERROR,
                req.cookie,
                p.len() as u32,
            );
            self.send(&[&h, &p]);
        } else {
            self.send(&[&simple_reply(code, req.cookie)]);
        }
    }

    /// Write one whole reply; a failure marks the connection broken.
    fn send(&self, parts: &[&[u8]]) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let r = parts
            .iter()
            .try_for_each(|p| out.write_all(p))
            .and_then(|()| out.flush());
        if r.is_err() {
            self.broken.store(true, Ordering::SeqCst);
        }
    }
}

/// The chunks of a structured read of `buf` (read at `off`) under the
/// allocation map `map`: `(start, length, hole)`, covering the read in
/// order. Zero extents are holes, and so is a parent's range that reads as
/// zeros; neighbouring data runs are one chunk.
fn content_runs(map: &[Extent], off: u64, buf: &[u8]) -> Vec<(u64, u64, bool)> {
    let end = off + buf.len() as u64;
    let mut runs: Vec<(u64, u64, bool)> = Vec::new();
    let mut pos = off;
    for e in map {
        let (s, t) = (e.start.max(pos), e.end().min(end));
        if s >= t {
            continue;
        }
        if s > pos {
            push_run(&mut runs, pos, s - pos, false);
        }
        let hole = match e.kind {
            ExtentKind::Zero => true,
            ExtentKind::Parent => buf[(s - off) as usize..(t - off) as usize]
                .iter()
                .all(|&b| b == 0),
            ExtentKind::Data => false,
        };
        push_run(&mut runs, s, t - s, hole);
        pos = t;
    }
    if pos < end {
        push_run(&mut runs, pos, end - pos, false);
    }
    runs
}

fn push_run(runs: &mut Vec<(u64, u64, bool)>, start: u64, n: u64, hole: bool) {
    match runs.last_mut() {
        Some(last) if last.2 == hole && last.0 + last.1 == start => last.1 += n,
        _ => runs.push((start, n, hole)),
    }
}

/// Write `data` at `off`: whole sectors straight to the disk (sealing in
/// place where the disk can), others by reading and patching the sectors
/// they cover.
fn write(d: &mut Disk, data: &mut [u8], off: u64) -> crate::Result<()> {
    let ss = u64::from(d.logical_sector_size());
    if off.is_multiple_of(ss) && (data.len() as u64).is_multiple_of(ss) {
        return match crate::VirtualDisk::fast_paths_mut(d) {
            Some(f) => f.write_in_place(data, off),
            None => d.write_at(data, off),
        };
    }
    let mut c = d.cursor();
    c.seek(SeekFrom::Start(off))
        .and_then(|_| c.write_all(data))
        .map_err(|e| Error::io(e, "cannot write the request's data"))
}

/// Write real zeros over `[off, off + len)` (`NBD_CMD_FLAG_NO_HOLE`: the
/// range stays allocated).
fn write_zeros(d: &mut Disk, off: u64, len: u64) -> crate::Result<()> {
    let zeros = vec![0u8; (len as usize).min(ZERO_CHUNK)];
    let mut c = d.cursor();
    c.seek(SeekFrom::Start(off))
        .map_err(|e| Error::io(e, "cannot write zeros"))?;
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        c.write_all(&zeros[..n])
            .map_err(|e| Error::io(e, "cannot write zeros"))?;
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(start: u64, length: u64, kind: ExtentKind) -> Extent {
        Extent {
            start,
            length,
            kind,
            file_offset: None,
        }
    }

    #[test]
    fn content_runs_cover_the_read_with_holes_for_zeros() {
        let map = [
            ext(0, 4096, ExtentKind::Data),
            ext(4096, 4096, ExtentKind::Zero),
            ext(8192, 4096, ExtentKind::Parent),
            ext(12288, 4096, ExtentKind::Parent),
        ];
        let mut buf = vec![0u8; 16384 - 1024];
        buf[8192 - 1024 + 5] = 1;
        let runs = content_runs(&map, 1024, &buf);
        assert_eq!(
            runs,
            vec![
                (1024, 3072, false),
                (4096, 4096, true),
                (8192, 4096, false),
                (12288, 4096, true),
            ]
        );
    }
}
