//! The handshake phase: fixed newstyle negotiation, options until the
//! client picks an export (`NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`) or leaves.
//!
//! Every option payload is read whole (at most [`MAX_OPTION_LEN`] bytes)
//! before it is parsed with bounds-checked [`Fields`], so a malformed
//! option gets `NBD_REP_ERR_INVALID` and the next option is still read in
//! step. A client that breaks the framing itself (wrong magic, unknown
//! client flags, an oversized option, too many options) is disconnected.

use std::io::{self, Read, Write};
use std::sync::Arc;

use super::Export;
use super::proto::*;

/// Most options one client may send before it is disconnected: a real
/// client sends a handful; a loop of them only burns the server's time.
pub const MAX_OPTIONS: usize = 1024;

/// Most queries in one meta context option (each names a context).
pub const MAX_QUERIES: u32 = 256;

/// What the client chose, for the transmission phase.
#[derive(Debug)]
pub struct Negotiated {
    /// The export served.
    pub export: Arc<Export>,
    /// Whether structured replies were negotiated.
    pub structured: bool,
    /// Whether `base:allocation` was selected for this export.
    pub allocation: bool,
}

/// Why the handshake ended without a transmission phase.
fn violation(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// State carried between options.
struct Session<'a, W: Write> {
    w: W,
    exports: &'a [Arc<Export>],
    structured: bool,
    /// The export `NBD_OPT_SET_META_CONTEXT` last selected contexts for,
    /// if it selected `base:allocation`.
    meta_for: Option<String>,
    no_zeroes: bool,
    shutting_down: &'a dyn Fn() -> bool,
}

/// Run the handshake on `r`/`w`. `Ok(None)` when the client ends it
/// (`NBD_OPT_ABORT`, or a closed connection between options); an error
/// when it breaks the protocol's framing or the connection fails.
pub fn negotiate<R: Read, W: Write>(
    r: &mut R,
    w: W,
    exports: &[Arc<Export>],
    shutting_down: &dyn Fn() -> bool,
) -> io::Result<Option<Negotiated>> {
    let mut s = Session {
        w,
        exports,
        structured: false,
        meta_for: None,
        no_zeroes: false,
        shutting_down,
    };
    let mut hello = [0u8; 18];
    hello[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    hello[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    hello[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.w.write_all(&hello)?;
    s.w.flush()?;
    let client = u32::from_be_bytes(read_array(r)?);
    if client & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(violation(format!("unknown client flags {client:#x}")));
    }
    s.no_zeroes = client & FLAG_C_NO_ZEROES != 0;
    for _ in 0..MAX_OPTIONS {
        let head: [u8; 16] = match read_array(r) {
            Ok(h) => h,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        };
        let magic = be64(&head[0..8]);
        if magic != IHAVEOPT {
            return Err(violation(format!(
                "option magic {magic:#x}, expected IHAVEOPT"
            )));
        }
        let option = be32(&head[8..12]);
        let len = be32(&head[12..16]);
        if len > MAX_OPTION_LEN {
            if option != OPT_EXPORT_NAME {
                s.reply_error(option, REP_ERR_TOO_BIG, "option data too long")?;
            }
            return Err(violation(format!(
                "option {option} with {len} bytes of data (at most {MAX_OPTION_LEN})"
            )));
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data)?;
        if let Some(done) = s.option(option, &data)? {
            return Ok(done);
        }
        s.w.flush()?;
    }
    Err(violation(format!("more than {MAX_OPTIONS} options")))
}

impl<W: Write> Session<'_, W> {
    /// The export `name` picks: the empty name is the first export.
    fn find(&self, name: &[u8]) -> Option<Arc<Export>> {
        if name.is_empty() {
            return self.exports.first().cloned();
        }
        self.exports
            .iter()
            .find(|e| e.name().as_bytes() == name)
            .cloned()
    }

    fn reply(&mut self, option: u32, kind: u32, payload: &[u8]) -> io::Result<()> {
        self.w
            .write_all(&option_reply(option, kind, payload.len() as u32))?;
        self.w.write_all(payload)
    }

    fn reply_error(&mut self, option: u32, kind: u32, msg: &str) -> io::Result<()> {
        self.reply(option, kind, wire_string(msg).as_bytes())?;
        self.w.flush()
    }

    /// Handle one option. `Some(result)` ends the handshake.
    fn option(&mut self, option: u32, data: &[u8]) -> io::Result<Option<Option<Negotiated>>> {
        if (self.shutting_down)() && option != OPT_ABORT {
            if option == OPT_EXPORT_NAME {
                return Err(violation("shutting down"));
            }
            self.reply_error(option, REP_ERR_SHUTDOWN, "the server is shutting down")?;
            return Ok(None);
        }
        match option {
            OPT_EXPORT_NAME => {
                let Some(export) = self.find(data) else {
                    // This option cannot answer with an error.
                    return Err(violation("NBD_OPT_EXPORT_NAME names no export"));
                };
                let mut b = Vec::with_capacity(134);
                b.extend_from_slice(&export.size().to_be_bytes());
                b.extend_from_slice(&export.transmission_flags(self.structured).to_be_bytes());
                if !self.no_zeroes {
                    b.extend_from_slice(&[0u8; 124]);
                }
                self.w.write_all(&b)?;
                self.w.flush()?;
                let allocation = self.meta_for.as_deref() == Some(export.name());
                return Ok(Some(Some(Negotiated {
                    export,
                    structured: self.structured,
                    allocation,
                })));
            }
            OPT_ABORT => {
                self.reply(option, REP_ACK, &[])?;
                self.w.flush()?;
                return Ok(Some(None));
            }
            OPT_LIST => {
                if !data.is_empty() {
                    self.reply_error(option, REP_ERR_INVALID, "NBD_OPT_LIST takes no data")?;
                    return Ok(None);
                }
                for e in self.exports {
                    let name = e.name().as_bytes();
                    let mut p = Vec::with_capacity(4 + name.len());
                    p.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    p.extend_from_slice(name);
                    self.reply(option, REP_SERVER, &p)?;
                }
                self.reply(option, REP_ACK, &[])?;
            }
            OPT_STARTTLS => {
                self.reply_error(option, REP_ERR_POLICY, "this server does not offer TLS")?;
            }
            OPT_INFO | OPT_GO => return self.info_or_go(option, data),
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    self.reply_error(
                        option,
                        REP_ERR_INVALID,
                        "NBD_OPT_STRUCTURED_REPLY takes no data",
                    )?;
                    return Ok(None);
                }
                self.structured = true;
                self.reply(option, REP_ACK, &[])?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => self.meta_context(option, data)?,
            _ => self.reply_error(option, REP_ERR_UNSUP, "unknown option")?,
        }
        Ok(None)
    }

    /// `NBD_OPT_INFO` and `NBD_OPT_GO`.
    fn info_or_go(&mut self, option: u32, data: &[u8]) -> io::Result<Option<Option<Negotiated>>> {
        let mut f = Fields::new(data);
        let parsed = (|| {
            let name = f.string()?;
            let n = f.u16()?;
            let mut requests = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                requests.push(f.u16()?);
            }
            Ok::<_, Truncated>((name, requests))
        })();
        let (name, requests) = match parsed {
            Ok(p) if f.remaining() == 0 => p,
            _ => {
                self.reply_error(
                    option,
                    REP_ERR_INVALID,
                    "malformed NBD_OPT_INFO/NBD_OPT_GO data",
                )?;
                return Ok(None);
            }
        };
        let Some(export) = self.find(name) else {
            self.reply_error(option, REP_ERR_UNKNOWN, "no such export")?;
            return Ok(None);
        };
        let mut info = Vec::with_capacity(12);
        info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        info.extend_from_slice(&export.size().to_be_bytes());
        info.extend_from_slice(&export.transmission_flags(self.structured).to_be_bytes());
        self.reply(option, REP_INFO, &info)?;
        // Sent whether asked for or not: a client that did not ask may
        // ignore it, and unaligned requests are served anyway.
        let mut bs = Vec::with_capacity(14);
        bs.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        bs.extend_from_slice(&export.min_block().to_be_bytes());
        bs.extend_from_slice(&export.preferred_block().to_be_bytes());
        bs.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
        self.reply(option, REP_INFO, &bs)?;
        if requests.contains(&INFO_NAME) {
            let mut p = INFO_NAME.to_be_bytes().to_vec();
            p.extend_from_slice(export.name().as_bytes());
            self.reply(option, REP_INFO, &p)?;
        }
        self.reply(option, REP_ACK, &[])?;
        self.w.flush()?;
        if option == OPT_INFO {
            return Ok(None);
        }
        let allocation = self.meta_for.as_deref() == Some(export.name());
        Ok(Some(Some(Negotiated {
            export,
            structured: self.structured,
            allocation,
        })))
    }

    /// `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`; only
    /// `base:allocation` exists.
    fn meta_context(&mut self, option: u32, data: &[u8]) -> io::Result<()> {
        let set = option == OPT_SET_META_CONTEXT;
        if set {
            // A set replaces the selection even when it fails.
            self.meta_for = None;
        }
        if !self.structured {
            return self.reply_error(
                option,
                REP_ERR_INVALID,
                "negotiate structured replies first",
            );
        }
        let mut f = Fields::new(data);
        let parsed = (|| {
            let name = f.string()?;
            let n = f.u32()?;
            if n > MAX_QUERIES {
                return Ok(Err(n));
            }
            let mut queries = Vec::with_capacity(n as usize);
            for _ in 0..n {
                queries.push(f.string()?);
            }
            Ok::<_, Truncated>(Ok((name, queries)))
        })();
        let (name, queries) = match parsed {
            Ok(Ok(p)) if f.remaining() == 0 => p,
            Ok(Err(n)) => {
                return self.reply_error(
                    option,
                    REP_ERR_TOO_BIG,
                    &format!("{n} queries (at most {MAX_QUERIES})"),
                );
            }
            _ => {
                return self.reply_error(option, REP_ERR_INVALID, "malformed meta context data");
            }
        };
        let Some(export) = self.find(name) else {
            return self.reply_error(option, REP_ERR_UNKNOWN, "no such export");
        };
        let wanted = if set {
            queries.iter().any(|q| *q == BASE_ALLOCATION.as_bytes())
        } else {
            queries.is_empty()
                || queries
                    .iter()
                    .any(|q| *q == b"base:" || *q == BASE_ALLOCATION.as_bytes())
        };
        if wanted {
            let mut p = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
            p.extend_from_slice(BASE_ALLOCATION.as_bytes());
            self.reply(option, REP_META_CONTEXT, &p)?;
            if set {
                self.meta_for = Some(export.name().to_string());
            }
        }
        self.reply(option, REP_ACK, &[])?;
        self.w.flush()
    }
}
