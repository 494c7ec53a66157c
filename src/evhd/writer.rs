//! Write-behind for encrypted data slots: a thread that stores ciphertext
//! batches while the caller encrypts the next one.
//!
//! Buffered writes to one file serialize on the file's lock in the kernel,
//! and copying into the page cache costs more than AES-GCM, so writing from
//! every encrypting thread left cores waiting on each other. One writer
//! thread overlaps that copy with encryption instead.
//!
//! Ordering: batches are written in the order they were queued, so a later
//! write of a reused slot lands after an earlier one. Anything that reads
//! slots or makes them durable (reads, flush, commit, drop) calls
//! [`WriteBehind::wait`] first; a failed write is reported there, and every
//! later write and wait fails too, since the table already points at slots
//! whose content was lost.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::error::{Error, ErrorKind, Result};
use crate::io::{Storage, io_err};

/// Batches queued or being written at most; a caller that has this many
/// outstanding waits for the oldest before queueing another.
pub const MAX_IN_FLIGHT: usize = 4;

/// One batch: ciphertext and where its runs go.
struct Job {
    buf: Vec<u8>,
    /// (start, end) in `buf` and the file offset of that run.
    runs: Vec<(usize, usize, u64)>,
}

/// The writer thread and its bookkeeping.
pub struct WriteBehind {
    jobs: Option<SyncSender<Job>>,
    done: Option<Receiver<(Vec<u8>, Result<()>)>>,
    thread: Option<JoinHandle<()>>,
    in_flight: usize,
    /// Buffers back from the writer, for the next batch.
    spare: Vec<Vec<u8>>,
    /// The first write that failed, as text (the error itself went to the
    /// first caller that waited).
    failed: Option<String>,
}

impl WriteBehind {
    /// No thread yet: it starts with the first batch.
    pub fn new() -> Self {
        WriteBehind {
            jobs: None,
            done: None,
            thread: None,
            in_flight: 0,
            spare: Vec::new(),
            failed: None,
        }
    }

    /// A buffer of `len` bytes for the next batch (its content is
    /// garbage): a returned one when there is one. Waits for the oldest
    /// batch when [`MAX_IN_FLIGHT`] are outstanding.
    pub fn buffer(&mut self, len: usize) -> Result<Vec<u8>> {
        self.failed()?;
        while self.in_flight >= MAX_IN_FLIGHT {
            self.collect_one()?;
        }
        let mut b = self.spare.pop().unwrap_or_default();
        b.resize(len, 0);
        Ok(b)
    }

    /// Queue `buf` to be written: each `(start, end, offset)` run of it at
    /// its file offset.
    pub fn submit(
        &mut self,
        storage: &Arc<dyn Storage>,
        buf: Vec<u8>,
        runs: Vec<(usize, usize, u64)>,
    ) -> Result<()> {
        self.failed()?;
        if self.jobs.is_none() {
            self.start(storage.clone())?;
        }
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|tx| tx.send(Job { buf, runs }).is_ok());
        if !sent {
            return Err(self.record("the writer thread stopped".into()));
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Wait until every queued batch is written; the first failure.
    pub fn wait(&mut self) -> Result<()> {
        while self.in_flight > 0 {
            self.collect_one()?;
        }
        self.failed()
    }

    fn start(&mut self, storage: Arc<dyn Storage>) -> Result<()> {
        let (jobs_tx, jobs_rx) = sync_channel::<Job>(MAX_IN_FLIGHT);
        let (done_tx, done_rx) = sync_channel(MAX_IN_FLIGHT);
        let thread = std::thread::Builder::new()
            .name("evhd-writer".into())
            .spawn(move || {
                for job in jobs_rx {
                    let r = job.runs.iter().try_for_each(|&(a, b, off)| {
                        storage
                            .write_at(&job.buf[a..b], off)
                            .map_err(io_err(super::DATA, off))
                    });
                    if done_tx.send((job.buf, r)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io(e, "starting the EVHD writer thread"))?;
        self.jobs = Some(jobs_tx);
        self.done = Some(done_rx);
        self.thread = Some(thread);
        Ok(())
    }

    fn collect_one(&mut self) -> Result<()> {
        let got = self.done.as_ref().and_then(|rx| rx.recv().ok());
        self.in_flight -= 1;
        match got {
            Some((buf, Ok(()))) => {
                self.spare.push(buf);
                Ok(())
            }
            Some((buf, Err(e))) => {
                self.spare.push(buf);
                self.failed = Some(e.to_string());
                Err(e)
            }
            None => Err(self.record("the writer thread stopped".into())),
        }
    }

    fn record(&mut self, why: String) -> Error {
        self.failed.get_or_insert(why.clone());
        Error::new(ErrorKind::Io, format!("writing encrypted blocks: {why}"))
    }

    fn failed(&self) -> Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(why) => Err(Error::new(
                ErrorKind::Io,
                format!(
                    "an earlier write of encrypted blocks failed ({why}); the image must be reopened"
                ),
            )),
        }
    }
}

impl Default for WriteBehind {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for WriteBehind {
    /// Finish the queued writes (their errors were the caller's to see at
    /// a wait; a disk dropped without a flush loses nothing it promised).
    fn drop(&mut self) {
        while self.in_flight > 0 {
            let _ = self.collect_one();
        }
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
