//! Serving disks over the Network Block Device protocol (NBD).
//!
//! [`Server`] serves one or more [`Export`]s (each an opened [`Disk`]
//! under a name) on any [`Listener`]: a Unix socket, a TCP socket, or a
//! listener of the caller's own. It speaks the fixed newstyle handshake
//! (`NBD_OPT_GO`, `NBD_OPT_INFO`, `NBD_OPT_LIST`, `NBD_OPT_EXPORT_NAME`,
//! structured replies, the `base:allocation` metadata context) and serves
//! reads with hole chunks, writes (with FUA), flushes, trims (as discards
//! where the format gives blocks back), write-zeroes (honouring `NO_HOLE`)
//! and block status from the allocation map.
//!
//! Requests of one connection run concurrently on a few worker threads and
//! may complete out of order; connections share each export's disk, reads
//! in parallel and writes one at a time, so a flush on one connection
//! covers the writes of all (`NBD_FLAG_CAN_MULTI_CONN`). Everything a
//! client controls is bounded: a request carries at most
//! [`MAX_PAYLOAD`](proto::MAX_PAYLOAD) bytes, option data at most
//! [`MAX_OPTION_LEN`](proto::MAX_OPTION_LEN), each connection holds at most
//! [`ServeOptions::buffer_budget`] bytes of request and reply buffers, all
//! connections together at most [`ServeOptions::server_budget`], and
//! the server at most [`ServeOptions::max_connections`] connections.
//!
//! ```no_run
//! # fn main() -> vhdkit::Result<()> {
//! use vhdkit::nbd::{Export, ServeOptions, Server};
//! let disk = vhdkit::open("disk.vhdx", &vhdkit::OpenOptions::new())?;
//! let server = Server::new(vec![Export::new("disk", disk, true)?], ServeOptions::new())?;
//! let listener = std::os::unix::net::UnixListener::bind("/tmp/disk.sock")
//!     .map_err(|e| vhdkit::Error::io(e, "cannot listen"))?;
//! server.serve(&listener)?; // until server.stop_handle().stop()
//! for mut disk in server.into_disks() {
//!     disk.close()?;
//! }
//! # Ok(())
//! # }
//! ```

pub mod proto;

mod handshake;
mod server;

use std::collections::HashMap;
use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::handle::Disk;

pub use handshake::{MAX_OPTIONS, MAX_QUERIES};

/// How long a client may take over its whole handshake (from being accepted
/// to the end of its options) before it is disconnected, so that
/// connections that never finish negotiating do not hold one of the
/// [`ServeOptions::max_connections`] places for ever (the default of
/// [`ServeOptions::handshake_timeout`]). Clients that finished it may stay
/// idle as long as they like: a mounted device idles for hours.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// At most one line on stderr per this long about connections refused for
/// the connection limit.
const REFUSAL_NOTICE_EVERY: Duration = Duration::from_secs(10);

/// How long a stopping server waits for clients to take their last replies
/// before it closes their connections outright.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// A disk served under a name.
pub struct Export {
    name: String,
    disk: RwLock<Disk>,
    read_only: bool,
    size: u64,
    logical_sector: u32,
    physical_sector: u32,
    can_discard: bool,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl Export {
    /// Serve `disk` as `name`; `read_only` refuses every write with
    /// `NBD_EPERM` (a disk opened read-only refuses them anyway). Names are
    /// strings of at most 4096 bytes without NUL, as the protocol requires.
    pub fn new(name: impl Into<String>, mut disk: Disk, read_only: bool) -> Result<Export> {
        let name = name.into();
        if name.len() > proto::MAX_STRING || name.contains('\0') {
            return Err(Error::invalid_argument(format!(
                "export name {name:?}: at most {} bytes and no NUL",
                proto::MAX_STRING
            )));
        }
        let can_discard = disk.as_virtual_disk_mut().discarder().is_some();
        Ok(Export {
            name,
            size: disk.virtual_size(),
            logical_sector: disk.logical_sector_size(),
            physical_sector: disk.physical_sector_size(),
            disk: RwLock::new(disk),
            read_only,
            can_discard,
        })
    }

    /// The export's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Size of the export in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether writes are refused.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The disk back, once no connection uses it.
    pub fn into_disk(self) -> Disk {
        match self.disk.into_inner() {
            Ok(d) => d,
            Err(p) => p.into_inner(),
        }
    }

    /// The transmission flags of this export for a client that did (or did
    /// not) negotiate structured replies.
    fn transmission_flags(&self, structured: bool) -> u16 {
        use proto::*;
        // One disk object serves every connection, so a flush on any of
        // them covers the writes of all: multi-conn is honoured.
        let mut f = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_CAN_MULTI_CONN;
        if self.read_only {
            f |= FLAG_READ_ONLY;
        } else {
            f |= FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES;
        }
        if structured {
            f |= FLAG_SEND_DF;
        }
        f
    }

    /// The smallest request size and alignment clients are told to use:
    /// the logical sector (smaller or unaligned requests are still served,
    /// by reading and patching whole sectors).
    fn min_block(&self) -> u32 {
        self.logical_sector
    }

    /// The request size without read-modify-write: the physical sector,
    /// at least 4 KiB.
    fn preferred_block(&self) -> u32 {
        self.physical_sector.max(4096)
    }

    /// The disk for reading; a disk whose last writer panicked is refused.
    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, Disk>> {
        self.disk.read().map_err(|_| poisoned())
    }

    /// The disk for writing.
    fn write(&self) -> Result<std::sync::RwLockWriteGuard<'_, Disk>> {
        self.disk.write().map_err(|_| poisoned())
    }
}

fn poisoned() -> Error {
    Error::new(
        crate::error::ErrorKind::Io,
        "the disk is unusable: a write to it was interrupted by a crash of its thread",
    )
}

/// Limits and behaviour of a [`Server`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    max_connections: usize,
    workers: usize,
    queue: usize,
    buffer_budget: u64,
    server_budget: u64,
    handshake_timeout: Duration,
    once: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: 32,
            workers: 4,
            queue: 32,
            buffer_budget: 64 << 20,
            server_budget: 256 << 20,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            once: false,
        }
    }
}

impl ServeOptions {
    /// The defaults: 32 connections, 4 workers and 32 queued requests per
    /// connection, 64 MiB of buffers per connection and 256 MiB for all,
    /// a 30 s handshake, serve until stopped.
    pub fn new() -> Self {
        Self::default()
    }

    /// Most connections served at once; more are closed when accepted.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Threads executing the requests of one connection; 0 executes them
    /// one at a time on the thread that reads them.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Requests of one connection read ahead of the workers.
    pub fn queue(mut self, n: usize) -> Self {
        self.queue = n.max(1);
        self
    }

    /// Bytes of request and reply buffers one connection may hold (at
    /// least one largest request); reading the next request waits below it.
    pub fn buffer_budget(mut self, bytes: u64) -> Self {
        self.buffer_budget = bytes.max(u64::from(proto::MAX_PAYLOAD));
        self
    }

    /// Bytes of request and reply buffers all connections together may
    /// hold (at least one largest request): a request waits for its share,
    /// and its connection is not read meanwhile. 256 MiB by default.
    pub fn server_budget(mut self, bytes: u64) -> Self {
        self.server_budget = bytes.max(u64::from(proto::MAX_PAYLOAD));
        self
    }

    /// How long a client may take over its whole handshake
    /// ([`HANDSHAKE_TIMEOUT`] by default; at least a millisecond).
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t.max(Duration::from_millis(1));
        self
    }

    /// Stop serving once a client has completed its handshake and no
    /// client is left (connections that leave before the end of their
    /// handshake, such as probes of whether the socket is in use, do not
    /// count).
    pub fn once(mut self, once: bool) -> Self {
        self.once = once;
        self
    }
}

/// A connected client's byte stream.
pub trait Stream: Read + Write + Send + Sync + Sized + 'static {
    /// A second handle on the same connection (one reads, one writes).
    fn try_clone(&self) -> io::Result<Self>;
    /// Stop reading: a blocked read returns end of stream.
    fn shutdown_read(&self);
    /// Close both directions.
    fn shutdown_all(&self);
    /// Bound each read, or not.
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

/// Where clients connect.
pub trait Listener {
    /// The streams it accepts.
    type Stream: Stream;
    /// Wait for the next client.
    fn accept(&self) -> io::Result<Self::Stream>;
    /// Something that makes a waiting [`Listener::accept`] return (for
    /// example by shutting the listening socket down), called when the
    /// server stops; `accept` may then fail.
    fn waker(&self) -> io::Result<Box<dyn Fn() + Send + Sync>>;
}

impl Stream for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
    fn shutdown_read(&self) {
        let _ = self.shutdown(Shutdown::Read);
    }
    fn shutdown_all(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, t)
    }
}

impl Stream for TcpStream {
    fn try_clone(&self) -> io::Result<Self> {
        TcpStream::try_clone(self)
    }
    fn shutdown_read(&self) {
        let _ = self.shutdown(Shutdown::Read);
    }
    fn shutdown_all(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, t)
    }
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    fn accept(&self) -> io::Result<UnixStream> {
        UnixListener::accept(self).map(|(s, _)| s)
    }
    fn waker(&self) -> io::Result<Box<dyn Fn() + Send + Sync>> {
        shutdown_waker(self.try_clone()?.into())
    }
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    fn accept(&self) -> io::Result<TcpStream> {
        let (s, _) = TcpListener::accept(self)?;
        // Replies are written whole; do not hold their last packet back.
        let _ = s.set_nodelay(true);
        Ok(s)
    }
    fn waker(&self) -> io::Result<Box<dyn Fn() + Send + Sync>> {
        shutdown_waker(self.try_clone()?.into())
    }
}

/// A waker that shuts the listening socket down: a waiting `accept`
/// returns an error at once. It goes by the descriptor, not by the address,
/// so it works when the socket file is gone and never reaches another
/// server listening on the same path.
#[allow(unsafe_code)] // each unsafe block below carries its SAFETY justification
fn shutdown_waker(fd: std::os::fd::OwnedFd) -> io::Result<Box<dyn Fn() + Send + Sync>> {
    use std::os::fd::AsRawFd;
    Ok(Box::new(move || {
        // SAFETY: shutdown(2) on a descriptor this closure owns.
        unsafe {
            libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR);
        }
    }))
}

/// A stream whose reads fail once a deadline has passed (each read waits
/// at most until it).
struct Deadlined<S> {
    stream: S,
    until: std::cell::Cell<Option<std::time::Instant>>,
}

impl<S: Stream> Read for Deadlined<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(until) = self.until.get() {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the handshake took too long",
                ));
            }
            self.stream.set_read_timeout(Some(left))?;
        }
        self.stream.read(buf)
    }
}

/// Connections being served, for stopping.
#[derive(Default)]
struct Connections {
    next: u64,
    /// Stop functions of live connections: `true` closes both directions,
    /// `false` only stops reading.
    closers: HashMap<u64, Box<dyn Fn(bool) + Send + Sync>>,
    /// Connections accepted so far.
    served: u64,
    /// When a refusal for the connection limit was last told on stderr.
    refusal_told: Option<std::time::Instant>,
}

/// State shared by a server and its stop handles.
#[derive(Default)]
struct State {
    stopping: AtomicBool,
    /// A client has completed its handshake (what [`ServeOptions::once`]
    /// waits for: a probe that connects and leaves does not count).
    negotiated: AtomicBool,
    conns: Mutex<Connections>,
    changed: Condvar,
    waker: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

impl State {
    fn conns(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(w) = self
            .waker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            w();
        }
        self.changed.notify_all();
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// Stops a [`Server`] from another thread (a signal handler's thread).
#[derive(Clone)]
pub struct StopHandle(Arc<State>);

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StopHandle").finish()
    }
}

impl StopHandle {
    /// Make [`Server::serve`] stop accepting, let clients take the replies
    /// of their requests in flight, flush the disks and return.
    pub fn stop(&self) {
        self.0.stop();
    }
}

/// An NBD server over a fixed set of exports.
pub struct Server {
    exports: Vec<Arc<Export>>,
    opts: ServeOptions,
    state: Arc<State>,
    budget: server::Budget,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("exports", &self.exports)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server of `exports` (at least one, names distinct); a client that
    /// asks for the empty name gets the first.
    pub fn new(exports: Vec<Export>, opts: ServeOptions) -> Result<Server> {
        if exports.is_empty() {
            return Err(Error::invalid_argument("an NBD server needs an export"));
        }
        for (i, e) in exports.iter().enumerate() {
            if exports[..i].iter().any(|o| o.name == e.name) {
                return Err(Error::invalid_argument(format!(
                    "two exports are named {:?}",
                    e.name
                )));
            }
        }
        Ok(Server {
            exports: exports.into_iter().map(Arc::new).collect(),
            budget: server::Budget::new(opts.server_budget),
            opts,
            state: Arc::default(),
        })
    }

    /// The exports served.
    pub fn exports(&self) -> impl Iterator<Item = &Export> {
        self.exports.iter().map(|e| e.as_ref())
    }

    /// A handle that stops [`Server::serve`].
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.state.clone())
    }

    /// Accept and serve clients on `listener` until stopped (or, with
    /// [`ServeOptions::once`], until the clients are gone), then flush every
    /// writable disk. Connections are served on threads of their own.
    /// Returns the first error of accepting or of the final flushes.
    pub fn serve<L: Listener + Sync>(&self, listener: &L) -> Result<()> {
        let waker = listener
            .waker()
            .map_err(|e| Error::io(e, "cannot prepare the listener for stopping"))?;
        *self.state.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker);
        let mut result = Ok(());
        std::thread::scope(|scope| {
            while !self.state.stopping() {
                let stream = match listener.accept() {
                    Ok(s) => s,
                    // Woken by the stop: the error says only that.
                    Err(_) if self.state.stopping() => break,
                    Err(e) => match e.kind() {
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => continue,
                        // Out of descriptors or memory: the clients that
                        // hold them will leave; try again shortly.
                        _ if matches!(e.raw_os_error(), Some(23 | 24 | 12 | 105)) => {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                        _ => {
                            result = Err(Error::io(e, "cannot accept an NBD client"));
                            self.state.stop();
                            break;
                        }
                    },
                };
                if self.state.stopping() {
                    break;
                }
                if let Some(id) = self.register(&stream) {
                    scope.spawn(move || {
                        self.serve_stream(stream);
                        let mut c = self.state.conns();
                        c.closers.remove(&id);
                        let idle = c.closers.is_empty();
                        drop(c);
                        if self.opts.once && idle && self.state.negotiated.load(Ordering::SeqCst) {
                            self.state.stop();
                        }
                        self.state.changed.notify_all();
                    });
                }
            }
            self.close_connections();
        });
        // The waker holds the listening socket: let it go with the listener.
        *self.state.waker.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let flushed = self.flush();
        result.and(flushed)
    }

    /// Take `stream` among the live connections, or close it when the
    /// server is full. Its id, when taken.
    fn register<S: Stream>(&self, stream: &S) -> Option<u64> {
        let handle = stream.try_clone().ok()?;
        let mut c = self.state.conns();
        if c.closers.len() >= self.opts.max_connections {
            stream.shutdown_all();
            let now = std::time::Instant::now();
            if c.refusal_told
                .is_none_or(|t| now.duration_since(t) >= REFUSAL_NOTICE_EVERY)
            {
                c.refusal_told = Some(now);
                eprintln!(
                    "vhdkit: connection limit ({}) reached; refusing new connections",
                    self.opts.max_connections
                );
            }
            return None;
        }
        let id = c.next;
        c.next += 1;
        c.served += 1;
        c.closers.insert(
            id,
            Box::new(move |all| {
                if all {
                    handle.shutdown_all();
                } else {
                    handle.shutdown_read();
                }
            }),
        );
        Some(id)
    }

    /// Stop reading from every client, give them [`STOP_GRACE`] to take
    /// their replies, then close what is left; returns when all are gone.
    fn close_connections(&self) {
        let mut c = self.state.conns();
        for close in c.closers.values() {
            close(false);
        }
        let (g, _) = self
            .state
            .changed
            .wait_timeout_while(c, STOP_GRACE, |c| !c.closers.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        c = g;
        for close in c.closers.values() {
            close(true);
        }
        drop(c);
    }

    /// Serve one connection on this thread: handshake within
    /// [`ServeOptions::handshake_timeout`], then requests until the client
    /// leaves.
    fn serve_stream<S: Stream>(&self, stream: S) {
        let Ok(writer) = stream.try_clone() else {
            return;
        };
        let until = std::time::Instant::now() + self.opts.handshake_timeout;
        let reader = Deadlined {
            stream,
            until: std::cell::Cell::new(Some(until)),
        };
        self.run(reader, writer, |r| {
            r.until.set(None);
            let _ = r.stream.set_read_timeout(None);
        });
    }

    /// Serve one client whose requests come from `reader` and whose replies
    /// go to `writer`, on this thread (and worker threads of its own), until
    /// it disconnects or breaks the protocol. Never panics on what the
    /// client sends.
    pub fn serve_connection<R: Read, W: Write + Send>(&self, reader: R, writer: W) {
        self.run(reader, writer, |_| {});
    }

    fn run<R: Read, W: Write + Send>(
        &self,
        mut reader: R,
        writer: W,
        on_transmission: impl FnOnce(&R),
    ) {
        let mut w = BufWriter::with_capacity(64 << 10, writer);
        let stopping = || self.state.stopping();
        let negotiated = match handshake::negotiate(&mut reader, &mut w, &self.exports, &stopping) {
            Ok(Some(n)) => n,
            _ => return,
        };
        self.state.negotiated.store(true, Ordering::SeqCst);
        on_transmission(&reader);
        server::transmit(&mut reader, w, negotiated, &self.opts, &self.budget);
    }

    /// Flush every writable export's disk; the first error.
    pub fn flush(&self) -> Result<()> {
        let mut first = Ok(());
        for e in &self.exports {
            if e.read_only {
                continue;
            }
            let r = e.write().and_then(|mut d| d.flush());
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// The most bytes of request and reply buffers all connections held at
    /// once so far (never more than [`ServeOptions::server_budget`]).
    pub fn buffer_peak(&self) -> u64 {
        self.budget.peak()
    }

    /// Connections accepted so far.
    pub fn connections_served(&self) -> u64 {
        self.state.conns().served
    }

    /// The disks back, in the order of the exports (after
    /// [`Server::serve`] has returned no connection holds them). A disk
    /// still in use by a connection served elsewhere
    /// ([`Server::serve_connection`] on another thread) is left out.
    pub fn into_disks(self) -> Vec<Disk> {
        self.exports
            .into_iter()
            .filter_map(|e| Arc::try_unwrap(e).ok().map(Export::into_disk))
            .collect()
    }
}
