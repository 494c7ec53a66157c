//! Hostile and broken NBD clients against the library's server, over raw
//! sockets: truncated handshakes, unknown flags and options, oversized
//! lengths, reads past the end, garbage after the handshake, writes to a
//! read-only export, many connections at once. Each gets the answer the
//! protocol gives (an error reply, or its connection closed); the server
//! stays up and serves a good client afterwards, byte for byte.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::procs::WAIT_LIMIT;
use common::{Rng, mixed_content, random_bytes, s, vhdkit_ok, write_raw};
use vhdkit::nbd::proto::*;
use vhdkit::nbd::{Export, ServeOptions, Server};
use vhdkit::{OpenOptions, report::Format};

/// Size of the served disk.
const SIZE: u64 = 4 << 20;

/// A raw disk of [`SIZE`] bytes of known content in `dir`.
fn disk(dir: &Path, name: &str, writable: bool) -> (vhdkit::Disk, Vec<u8>) {
    let path = dir.join(name);
    let data = mixed_content(SIZE as usize, 5);
    write_raw(&path, &data);
    let opts = OpenOptions::new()
        .writable(writable)
        .format(Some(Format::Raw));
    (vhdkit::open(&path, &opts).unwrap(), data)
}

/// A server of a writable export "rw" and a read-only export "ro" on a
/// Unix socket in `dir`, on a thread of its own.
struct Running {
    server: Arc<Server>,
    thread: Option<std::thread::JoinHandle<vhdkit::Result<()>>>,
    sock: std::path::PathBuf,
    data: Vec<u8>,
}

impl Running {
    fn start(dir: &Path, opts: ServeOptions) -> Running {
        let (rw, data) = disk(dir, "rw.raw", true);
        let (ro, _) = disk(dir, "ro.raw", false);
        let server = Arc::new(
            Server::new(
                vec![
                    Export::new("rw", rw, false).unwrap(),
                    Export::new("ro", ro, true).unwrap(),
                ],
                opts,
            )
            .unwrap(),
        );
        let sock = dir.join("nbd.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let s = server.clone();
        let thread = std::thread::spawn(move || s.serve(&listener));
        Running {
            server,
            thread: Some(thread),
            sock,
            data,
        }
    }

    fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.sock).unwrap();
        // Only so that a server that never answers fails the test instead
        // of hanging it; nothing is asserted about time.
        s.set_read_timeout(Some(WAIT_LIMIT)).unwrap();
        s
    }

    fn stop(mut self) {
        self.server.stop_handle().stop();
        let r = self
            .thread
            .take()
            .unwrap()
            .join()
            .expect("the server thread panicked");
        r.expect("the server ends cleanly");
    }
}

/// A client speaking the protocol by hand.
struct Client {
    s: UnixStream,
}

impl Client {
    /// Connect, read the greeting, send client flags.
    fn hello(run: &Running) -> Client {
        let mut s = run.connect();
        let mut g = [0u8; 18];
        s.read_exact(&mut g).unwrap();
        assert_eq!(be64(&g[0..8]), NBDMAGIC);
        assert_eq!(be64(&g[8..16]), IHAVEOPT);
        assert_eq!(be16(&g[16..18]) & FLAG_FIXED_NEWSTYLE, FLAG_FIXED_NEWSTYLE);
        s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
            .unwrap();
        Client { s }
    }

    fn option(&mut self, opt: u32, data: &[u8]) {
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b).unwrap();
    }

    /// One option reply: (option, type, payload).
    fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(be64(&h[0..8]), REPLY_MAGIC);
        let mut p = vec![0u8; be32(&h[16..20]) as usize];
        self.s.read_exact(&mut p).unwrap();
        (be32(&h[8..12]), be32(&h[12..16]), p)
    }

    /// Replies until the final one (ACK or error); returns all.
    fn option_replies(&mut self) -> Vec<(u32, u32, Vec<u8>)> {
        let mut v = Vec::new();
        loop {
            let r = self.option_reply();
            let last = r.1 == REP_ACK || r.1 & (1 << 31) != 0;
            v.push(r);
            if last {
                return v;
            }
        }
    }

    fn go_data(name: &str) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        d
    }

    /// Structured replies, `base:allocation`, then GO to `name`; the
    /// export's size and flags.
    fn go(&mut self, name: &str, structured: bool) -> (u64, u16) {
        if structured {
            self.option(OPT_STRUCTURED_REPLY, &[]);
            assert_eq!(self.option_replies().last().unwrap().1, REP_ACK);
            let mut d = (name.len() as u32).to_be_bytes().to_vec();
            d.extend_from_slice(name.as_bytes());
            d.extend_from_slice(&1u32.to_be_bytes());
            d.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
            d.extend_from_slice(BASE_ALLOCATION.as_bytes());
            self.option(OPT_SET_META_CONTEXT, &d);
            let r = self.option_replies();
            assert_eq!(r.len(), 2, "one context, then ACK");
            assert_eq!(r[0].1, REP_META_CONTEXT);
        }
        self.option(OPT_GO, &Self::go_data(name));
        let r = self.option_replies();
        assert_eq!(r.last().unwrap().1, REP_ACK, "GO {name}: {r:?}");
        let info = r
            .iter()
            .find(|x| x.1 == REP_INFO && be16(&x.2) == INFO_EXPORT)
            .expect("NBD_INFO_EXPORT");
        (be64(&info.2[2..10]), be16(&info.2[10..12]))
    }

    fn request(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, length: u32) {
        let r = Request {
            flags,
            kind,
            cookie,
            offset,
            length,
        };
        self.s.write_all(&r.to_bytes()).unwrap();
    }

    /// Any reply: its cookie, and for a read of `len` bytes at `offset`
    /// with structured replies the data assembled from the chunks, or the
    /// error. Simple replies carry data when `simple_len` is given.
    fn reply(&mut self, offset_len: Option<(u64, usize)>) -> (u64, Result<Vec<u8>, u32>) {
        let mut m = [0u8; 4];
        self.s.read_exact(&mut m).unwrap();
        if be32(&m) == SIMPLE_REPLY_MAGIC {
            let mut h = [0u8; 12];
            self.s.read_exact(&mut h).unwrap();
            let (err, cookie) = (be32(&h[0..4]), be64(&h[4..12]));
            if err != 0 {
                return (cookie, Err(err));
            }
            let mut data = vec![0u8; offset_len.map_or(0, |x| x.1)];
            self.s.read_exact(&mut data).unwrap();
            return (cookie, Ok(data));
        }
        assert_eq!(be32(&m), STRUCTURED_REPLY_MAGIC);
        let (off, len) = offset_len.unwrap_or((0, 0));
        let mut data = vec![0xeeu8; len];
        let mut covered = 0usize;
        let mut error = None;
        let mut first = true;
        loop {
            let mut h = [0u8; 16];
            if first {
                self.s.read_exact(&mut h).unwrap();
                first = false;
            } else {
                let mut m = [0u8; 4];
                self.s.read_exact(&mut m).unwrap();
                assert_eq!(be32(&m), STRUCTURED_REPLY_MAGIC);
                self.s.read_exact(&mut h).unwrap();
            }
            let flags = be16(&h[0..2]);
            let kind = be16(&h[2..4]);
            let cookie = be64(&h[4..12]);
            let mut p = vec![0u8; be32(&h[12..16]) as usize];
            self.s.read_exact(&mut p).unwrap();
            match kind {
                REPLY_TYPE_OFFSET_DATA => {
                    let at = (be64(&p) - off) as usize;
                    data[at..at + p.len() - 8].copy_from_slice(&p[8..]);
                    covered += p.len() - 8;
                }
                REPLY_TYPE_OFFSET_HOLE => {
                    let at = (be64(&p) - off) as usize;
                    let n = be32(&p[8..]) as usize;
                    data[at..at + n].fill(0);
                    covered += n;
                }
                REPLY_TYPE_ERROR => {
                    error = Some(be32(&p));
                    let n = be16(&p[4..6]) as usize;
                    assert!(n <= p.len() - 6 && n <= MAX_STRING);
                }
                REPLY_TYPE_BLOCK_STATUS => {
                    data = p;
                    covered = len;
                }
                REPLY_TYPE_NONE => assert!(p.is_empty()),
                t => panic!("unexpected chunk type {t}"),
            }
            if flags & REPLY_FLAG_DONE != 0 {
                return match error {
                    Some(e) => (cookie, Err(e)),
                    None => {
                        assert_eq!(covered, len, "the chunks cover the read");
                        (cookie, Ok(data))
                    }
                };
            }
        }
    }

    /// Whether the server closed the connection (reads end).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// A good client reads the disk through the export, with and without
/// structured replies: the server is still whole.
fn good_client(run: &Running) {
    for structured in [false, true] {
        let mut c = Client::hello(run);
        let (size, _) = c.go("ro", structured);
        assert_eq!(size, SIZE);
        let (off, len) = (12345u64, 300_000usize);
        c.request(CMD_READ, 0, 77, off, len as u32);
        let (cookie, data) = c.reply(Some((off, len)));
        assert_eq!(cookie, 77);
        assert!(
            data.unwrap() == run.data[off as usize..off as usize + len],
            "the good client reads the disk's bytes"
        );
        c.request(CMD_DISC, 0, 78, 0, 0);
        assert!(c.closed());
    }
}

#[test]
fn broken_handshakes_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(dir.path(), ServeOptions::new());

    // Gone at once; gone after half the client flags.
    drop(run.connect());
    let mut s = run.connect();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    s.write_all(&[0, 0]).unwrap();
    drop(s);

    // Unknown client flags: the server must drop the connection.
    let mut s = run.connect();
    s.read_exact(&mut g).unwrap();
    s.write_all(&0x8000_0001u32.to_be_bytes()).unwrap();
    assert!(
        Client { s }.closed(),
        "unknown client flags close the connection"
    );

    // Wrong option magic: out of step, closed.
    let mut c = Client::hello(&run);
    c.s.write_all(&[0x55; 16]).unwrap();
    assert!(c.closed());

    // An option header cut short.
    let mut c = Client::hello(&run);
    c.s.write_all(&IHAVEOPT.to_be_bytes()[..5]).unwrap();
    drop(c);

    // An option claiming 1 GiB of data: refused as too big, then closed,
    // without the server reading (or allocating) it.
    let mut c = Client::hello(&run);
    let mut b = IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&OPT_GO.to_be_bytes());
    b.extend_from_slice(&(1u32 << 30).to_be_bytes());
    c.s.write_all(&b).unwrap();
    assert_eq!(c.option_reply().1, REP_ERR_TOO_BIG);
    assert!(c.closed());

    // NBD_OPT_EXPORT_NAME of no export cannot be answered: closed.
    let mut c = Client::hello(&run);
    c.option(OPT_EXPORT_NAME, b"nonesuch");
    assert!(c.closed());

    good_client(&run);
    run.stop();
}

#[test]
fn bad_options_get_errors_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(dir.path(), ServeOptions::new());
    let mut c = Client::hello(&run);
    c.option(0x7777, b"whatever");
    assert_eq!(c.option_reply().1, REP_ERR_UNSUP);
    c.option(OPT_STARTTLS, &[]);
    assert_eq!(c.option_reply().1, REP_ERR_POLICY);
    c.option(OPT_LIST, b"x");
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);
    // A name longer than the option's data.
    c.option(OPT_GO, &[0, 0, 0, 200, b'r', b'w', 0, 0]);
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);
    // Trailing bytes after the information requests.
    let mut d = Client::go_data("rw");
    d.push(1);
    c.option(OPT_INFO, &d);
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);
    c.option(OPT_INFO, &Client::go_data("nonesuch"));
    assert_eq!(c.option_reply().1, REP_ERR_UNKNOWN);
    // Meta contexts need structured replies first.
    c.option(OPT_SET_META_CONTEXT, &[0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);
    c.option(OPT_LIST, &[]);
    let list = c.option_replies();
    let names: Vec<&[u8]> = list
        .iter()
        .filter(|r| r.1 == REP_SERVER)
        .map(|r| &r.2[4..])
        .collect();
    assert_eq!(names, [b"rw".as_slice(), b"ro".as_slice()]);
    // After all that, the session still negotiates and serves.
    let (size, flags) = c.go("rw", true);
    assert_eq!(size, SIZE);
    assert_eq!(flags & FLAG_READ_ONLY, 0);
    c.request(CMD_READ, 0, 1, 0, 4096);
    assert!(c.reply(Some((0, 4096))).1.unwrap() == run.data[..4096]);
    // NBD_OPT_ABORT on a fresh connection: ACK, then the server closes.
    let mut c = Client::hello(&run);
    c.option(OPT_ABORT, &[]);
    assert_eq!(c.option_reply().1, REP_ACK);
    assert!(c.closed());
    run.stop();
}

#[test]
fn bad_requests_get_errors_and_garbage_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(dir.path(), ServeOptions::new());
    for structured in [false, true] {
        let mut c = Client::hello(&run);
        c.go("rw", structured);
        let ask = |c: &mut Client, kind, flags, cookie, off, len| {
            c.request(kind, flags, cookie, off, len);
            let (got, r) = c.reply(if kind == CMD_READ {
                Some((off, len as usize))
            } else {
                None
            });
            assert_eq!(got, cookie);
            r
        };
        // Reads past the end, across it, and larger than the limit.
        assert_eq!(ask(&mut c, CMD_READ, 0, 1, SIZE, 512), Err(EINVAL));
        assert_eq!(ask(&mut c, CMD_READ, 0, 2, SIZE - 512, 1024), Err(EINVAL));
        assert_eq!(ask(&mut c, CMD_READ, 0, 3, u64::MAX - 10, 512), Err(EINVAL));
        assert_eq!(ask(&mut c, CMD_READ, 0, 4, 0, MAX_PAYLOAD + 1), Err(EINVAL));
        // Unknown command and flags; block status without a context.
        assert_eq!(ask(&mut c, 99, 0, 5, 0, 512), Err(EINVAL));
        assert_eq!(ask(&mut c, CMD_READ, 1 << 9, 6, 0, 512), Err(EINVAL));
        if !structured {
            assert_eq!(ask(&mut c, CMD_BLOCK_STATUS, 0, 7, 0, 512), Err(EINVAL));
        }
        // A write past the end is refused, its payload consumed.
        c.request(CMD_WRITE, 0, 8, SIZE - 512, 1024);
        c.s.write_all(&[0xab; 1024]).unwrap();
        assert_eq!(c.reply(None), (8, Err(ENOSPC)));
        // Unaligned reads are served.
        let r = ask(&mut c, CMD_READ, 0, 9, 3, 1001).unwrap();
        assert!(r == run.data[3..1004]);
        // A write announcing more than 32 MiB: refused, then closed (its
        // payload cannot be skipped at a bounded cost).
        c.request(CMD_WRITE, 0, 10, 0, u32::MAX);
        assert_eq!(c.reply(None), (10, Err(EINVAL)));
        assert!(c.closed());
    }
    // Writes to the read-only export: EPERM.
    let mut c = Client::hello(&run);
    let (_, flags) = c.go("ro", true);
    assert_ne!(flags & FLAG_READ_ONLY, 0);
    c.request(CMD_WRITE, 0, 1, 0, 512);
    c.s.write_all(&[1; 512]).unwrap();
    assert_eq!(c.reply(None), (1, Err(EPERM)));
    c.request(CMD_WRITE_ZEROES, 0, 2, 0, 512);
    assert_eq!(c.reply(None), (2, Err(EPERM)));
    c.request(CMD_TRIM, 0, 3, 0, 512);
    assert_eq!(c.reply(None), (3, Err(EPERM)));
    // Garbage after a valid handshake: the connection closes.
    c.s.write_all(b"this is not an NBD request at all!")
        .unwrap();
    assert!(c.closed());
    good_client(&run);
    run.stop();
}

#[test]
fn pipelined_requests_complete_out_of_order_with_the_right_data() {
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(dir.path(), ServeOptions::new().workers(4).queue(8));
    let mut c = Client::hello(&run);
    c.go("rw", true);
    let mut rng = Rng::new(3);
    let mut model = run.data.clone();
    // Writes first (each acknowledged), then a flood of reads in flight.
    for i in 0..32u64 {
        let off = rng.below(SIZE - 70_000);
        let len = 1 + rng.below(65_536) as usize;
        let buf = random_bytes(len, i);
        c.request(CMD_WRITE, CMD_FLAG_FUA, 1000 + i, off, len as u32);
        c.s.write_all(&buf).unwrap();
        assert_eq!(c.reply(None), (1000 + i, Ok(Vec::new())));
        model[off as usize..off as usize + len].copy_from_slice(&buf);
    }
    let mut asked = std::collections::HashMap::new();
    let mut w = c.s.try_clone().unwrap();
    let reqs: Vec<(u64, u64, u32)> = (0..200u64)
        .map(|i| (i, rng.below(SIZE - 200_000), 1 + rng.below(200_000) as u32))
        .collect();
    for &(cookie, off, len) in &reqs {
        asked.insert(cookie, (off, len as usize));
    }
    let writer = std::thread::spawn(move || {
        for (cookie, off, len) in reqs {
            let r = Request {
                flags: 0,
                kind: CMD_READ,
                cookie,
                offset: off,
                length: len,
            };
            w.write_all(&r.to_bytes()).unwrap();
        }
    });
    // Replies name their request by cookie; read each with its geometry.
    for _ in 0..200 {
        let mut m = [0u8; 20];
        c.s.peek_exact(&mut m);
        let cookie = be64(&m[8..16]);
        let (off, len) = asked[&cookie];
        let (got, data) = c.reply(Some((off, len)));
        assert_eq!(got, cookie);
        assert!(
            data.unwrap() == model[off as usize..off as usize + len],
            "read {cookie} returns the written bytes"
        );
    }
    writer.join().unwrap();
    run.stop();
}

#[test]
fn many_hostile_connections_then_a_good_client() {
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(dir.path(), ServeOptions::new().max_connections(8));
    let mut held = Vec::new();
    for i in 0..64u64 {
        let mut s = UnixStream::connect(&run.sock).unwrap();
        let junk = random_bytes(1 + (i as usize * 37) % 300, i);
        // The server may already have closed a connection over the limit.
        let _ = s.write_all(&junk);
        if i % 4 == 0 {
            held.push(s);
        }
    }
    // Connections over the limit are closed at once; those still held
    // got their junk refused. Free them all, then serve a good client.
    drop(held);
    // The places are given back as the server notices the closed sockets.
    let mut tries = 0;
    loop {
        let mut s = run.connect();
        let mut g = [0u8; 18];
        if s.read_exact(&mut g).is_ok() {
            break;
        }
        tries += 1;
        assert!(tries < 10_000, "the server never took a client again");
        std::thread::sleep(Duration::from_millis(5));
    }
    good_client(&run);
    run.stop();
}

#[test]
fn a_client_gone_mid_write_leaves_a_consistent_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.vhdx");
    vhdkit_ok(["create", "--block-size", "1M", s(&path), "8M"]);
    let disk = vhdkit::open(&path, &OpenOptions::new().writable(true)).unwrap();
    let server = Arc::new(
        Server::new(
            vec![Export::new("w", disk, false).unwrap()],
            ServeOptions::new(),
        )
        .unwrap(),
    );
    let sock = dir.path().join("w.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let srv = server.clone();
    let thread = std::thread::spawn(move || srv.serve(&listener));
    let run = Running {
        server: server.clone(),
        thread: None,
        sock,
        data: Vec::new(),
    };
    let mut c = Client::hello(&run);
    c.go("w", false);
    let full = random_bytes(256 << 10, 9);
    c.request(CMD_WRITE, 0, 1, 1 << 20, full.len() as u32);
    c.s.write_all(&full).unwrap();
    assert_eq!(c.reply(None), (1, Ok(Vec::new())));
    // Several writes in flight, the last one cut off in its payload.
    for i in 0..4u64 {
        c.request(CMD_WRITE, 0, 10 + i, (3 << 20) + i * 4096, 4096);
        c.s.write_all(&[i as u8 + 1; 4096]).unwrap();
    }
    c.request(CMD_WRITE, 0, 20, 5 << 20, 65536);
    c.s.write_all(&[0xcc; 1000]).unwrap();
    drop(c);
    server.stop_handle().stop();
    thread.join().unwrap().unwrap();
    drop(run);
    let server = Arc::try_unwrap(server).unwrap();
    for mut d in server.into_disks() {
        d.close().unwrap();
    }
    vhdkit_ok(["check", s(&path)]);
    let back = vhdkit_ok(["read", s(&path), "--offset", "1M", "--length", "256K"]);
    assert!(back == full, "the acknowledged write is in the image");
    let tail = vhdkit_ok(["read", s(&path), "--offset", "5M", "--length", "64K"]);
    assert!(
        tail.iter().all(|&b| b == 0),
        "the cut-off write never happened"
    );
}

/// Peek at the start of the next reply without consuming it.
trait PeekExact {
    fn peek_exact(&self, buf: &mut [u8]);
}

impl PeekExact for UnixStream {
    fn peek_exact(&self, buf: &mut [u8]) {
        use std::os::fd::AsRawFd;
        loop {
            // SAFETY: recv(2) into a buffer of the given length.
            let n = unsafe {
                libc::recv(
                    self.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_PEEK | libc::MSG_WAITALL,
                )
            };
            assert!(n >= 0, "recv failed");
            if n as usize == buf.len() {
                return;
            }
        }
    }
}

/// The handshake has one deadline, not one per read: a client trickling a
/// byte at a time, each well within it, is still closed in the end.
#[test]
fn a_trickling_handshake_is_closed_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ServeOptions::new().handshake_timeout(Duration::from_millis(500));
    let run = Running::start(dir.path(), opts);
    let mut c = Client::hello(&run);
    let mut b = IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&OPT_GO.to_be_bytes());
    b.extend_from_slice(&4000u32.to_be_bytes());
    b.resize(4000 + 16, 0);
    // 100 ms between bytes: a per-read limit of 500 ms would never fire.
    let closed = b.iter().any(|byte| {
        std::thread::sleep(Duration::from_millis(100));
        c.s.write_all(&[*byte]).is_err()
    });
    assert!(closed, "the server kept a handshake going for 400 s");
    good_client(&run);
    run.stop();
}

/// Beyond `max_connections` new connections are closed at once; the
/// connections held are served, and a place freed is taken again.
#[test]
fn connections_beyond_the_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(dir.path(), ServeOptions::new().max_connections(2));
    let held = [Client::hello(&run), Client::hello(&run)];
    let mut s = run.connect();
    let mut g = [0u8; 18];
    assert!(s.read_exact(&mut g).is_err(), "a third client is refused");
    drop(held);
    // The places are given back when the server sees the clients gone.
    let served = (0..1000).any(|_| {
        let mut s = run.connect();
        if s.read_exact(&mut g).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
        false
    });
    assert!(served, "a freed place is taken again");
    // The probes above (and the good client's own two connections) give
    // their places back only once the server notices them closed: a good
    // client is served once it has.
    let good = (0..100).any(|_| {
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| good_client(&run)));
        ok.is_ok() || {
            std::thread::sleep(Duration::from_millis(50));
            false
        }
    });
    assert!(good, "a good client is served once places are free");
    run.stop();
}

/// Connections flooding whole-disk reads share the server's buffer budget:
/// the buffers held at once, by the server's own count, never exceed it,
/// and every read still gets its bytes.
#[test]
fn pipelining_connections_stay_within_the_server_budget() {
    let dir = tempfile::tempdir().unwrap();
    let budget = u64::from(MAX_PAYLOAD);
    let opts = ServeOptions::new()
        .workers(4)
        .queue(16)
        .server_budget(budget);
    let run = Running::start(dir.path(), opts);
    let clients: Vec<_> = (0..4u64)
        .map(|n| {
            let mut c = Client::hello(&run);
            c.go("rw", false);
            let mut w = c.s.try_clone().unwrap();
            let writer = std::thread::spawn(move || {
                for i in 0..24u64 {
                    let r = Request {
                        flags: 0,
                        kind: CMD_READ,
                        cookie: n * 100 + i,
                        offset: 0,
                        length: SIZE as u32,
                    };
                    w.write_all(&r.to_bytes()).unwrap();
                }
            });
            let data = run.data.clone();
            std::thread::spawn(move || {
                for _ in 0..24 {
                    let (_, got) = c.reply(Some((0, SIZE as usize)));
                    assert!(got.unwrap() == data, "a read returns the disk");
                }
                writer.join().unwrap();
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let peak = run.server.buffer_peak();
    assert!(peak <= budget, "{peak} bytes held at once, budget {budget}");
    assert!(peak >= SIZE, "the reads were counted ({peak})");
    run.stop();
}

/// With `once`, a client that connects and leaves without a handshake (a
/// probe of whether the socket is in use) does not end the server; the
/// first client that negotiates and leaves does.
#[test]
fn once_counts_only_clients_that_negotiated() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Running::start(dir.path(), ServeOptions::new().once(true));
    drop(run.connect());
    let mut s = run.connect();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    drop(s);
    // Still serving: this client negotiates; its leaving ends the server.
    let mut c = Client::hello(&run);
    c.go("rw", true);
    drop(c);
    let r = run.thread.take().unwrap().join().expect("no panic");
    r.expect("the server ends cleanly after its client");
}
