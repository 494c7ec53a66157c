//! Opening a container: choosing the header copy, unwrapping the master
//! key, judging the signature, replaying a pending journal record and
//! loading and verifying the block table. Nothing is written before every
//! check has passed.

use super::*;

impl EvhdDisk {
    /// Open the container in `storage`. Without keys in `opts` the image
    /// opens locked: `info` works, reads and writes fail with `KeyRequired`.
    /// Nothing is written before a key has unwrapped the master key and the
    /// header MAC verified.
    pub fn open(
        storage: Box<dyn Storage>,
        path: Option<PathBuf>,
        opts: &crate::OpenOptions,
    ) -> Result<EvhdDisk> {
        let len = storage.len().map_err(io_err("EVHD file", 0))?;
        let copies = read_copies(storage.as_ref(), len);
        let assessment = fallback::assess(storage.as_ref(), &copies);
        let [a, b] = copies;
        let mut warnings = Vec::new();
        let (current_copy, header, bytes) = match (a, b) {
            (Ok((ha, ba)), Ok((hb, bb))) => {
                if hb.sequence > ha.sequence {
                    (1, hb, bb)
                } else {
                    (0, ha, ba)
                }
            }
            (Ok((h, b)), Err(e)) => {
                warnings.push(
                    Warning::new(
                        WarningKind::CopyUnusable,
                        format!("header copy B unusable ({e}); using copy A"),
                    )
                    .at(header::STRUCTURE, COPY_OFFSETS[1]),
                );
                (0, h, b)
            }
            (Err(e), Ok((h, b))) => {
                warnings.push(
                    Warning::new(
                        WarningKind::CopyUnusable,
                        format!("header copy A unusable ({e}); using copy B"),
                    )
                    .at(header::STRUCTURE, COPY_OFFSETS[0]),
                );
                (1, h, b)
            }
            (Err(ea), Err(eb)) => {
                return Err(Error::corrupt(
                    header::STRUCTURE,
                    0,
                    format!("no usable header copy: A: {ea}; B: {eb}"),
                ));
            }
        };
        let mut disk = EvhdDisk {
            storage: Arc::from(storage),
            path,
            header,
            current_copy,
            writable: opts.writable,
            warnings,
            signature: Status::Unsigned,
            epoch_write_limit: EPOCH_WRITE_LIMIT,
            rekey_batch: REKEY_BATCH,
            scratch: Vec::new(),
            state: None,
        };
        if opts.keys.is_empty() {
            if opts.writable {
                return Err(disk.key_required());
            }
            // Without the master key the MAC cannot be checked: the
            // signature only shows that its signer signed this MAC value.
            let at = COPY_OFFSETS[disk.current_copy];
            let status = signature::verify(&disk.header, &bytes, at, &trusted(opts))?;
            disk.judge(status, opts)?;
            disk.note_fallback(assessment.and_then(|a| a.verdict(None, &[])), opts);
            return Ok(disk);
        }
        if let Err(e) = disk.unlock_and_load(bytes, opts, len) {
            return Err(fallback::explain(e, assessment));
        }
        let seq = disk.header.sequence;
        let verdict = assessment.and_then(|a| a.verdict(Some(seq), &opts.keys));
        // Writing now would make a possibly rolled-back state the newest
        // commit and erase the evidence (the damaged copy is overwritten).
        if let Some(f) = verdict
            .as_ref()
            .filter(|f| f.lost && opts.writable && !opts.vouch)
        {
            return Err(Error::new(
                ErrorKind::NeedsRepair,
                format!(
                    "refusing to write: {}; a commit would make that older state the newest and overwrite the evidence: inspect it (`vhdkit check`), then `vhdkit sign IMAGE --key KEY` accepts the state it opens to",
                    f.message
                ),
            ));
        }
        disk.note_fallback(verdict, opts);
        Ok(disk)
    }

    /// Record a fall back to the older header copy among the warnings
    /// (and on stderr when `opts` asks for it).
    fn note_fallback(&mut self, f: Option<fallback::Fallback>, opts: &crate::OpenOptions) {
        if let Some(f) = f {
            if opts.print_warnings {
                let name = self
                    .path
                    .as_ref()
                    .map_or_else(|| "EVHD image".to_string(), |p| p.display().to_string());
                eprintln!("vhdkit: warning: {name}: {}", f.message);
            }
            let kind = if f.lost {
                WarningKind::CommitMayBeLost
            } else {
                WarningKind::CommitNotApplied
            };
            self.warnings
                .push(Warning::new(kind, f.message).in_structure(header::STRUCTURE));
        }
    }

    /// Refuse an image not signed by a trusted key if `opts` requires one;
    /// otherwise remember who signed (`info` and the warnings show it).
    fn judge(&mut self, status: Status, opts: &crate::OpenOptions) -> Result<()> {
        if opts.require_signed
            && let Some(p) = status.problem()
        {
            return Err(Error::new(ErrorKind::Untrusted, p).with_hint(crate::Hint::RequireSigned));
        }
        // A writer's next commit signs with its key: refuse to vouch for
        // content nobody this writer trusts has signed, unless told to.
        if opts.writable
            && !opts.vouch
            && let Some(p) = status.problem()
        {
            return Err(Error::new(
                ErrorKind::Untrusted,
                format!(
                    "refusing to write: {p}, and the next commit would sign it with your key, vouching for content nobody you trust wrote; check its content, then `vhdkit sign IMAGE --key KEY` vouches for it (or give its signer's public key with --trust)"
                ),
            ));
        }
        self.signature = status;
        Ok(())
    }

    pub(super) fn key_required(&self) -> Error {
        let to: Vec<String> = self
            .header
            .recipients
            .iter()
            .map(|s| format!("{} {:?}", s.key.fingerprint().short(), s.label))
            .collect();
        Error::new(
            ErrorKind::KeyRequired,
            format!(
                "this image is encrypted (EVHD); pass --key with the private key of one of its recipients: {}",
                to.join(", ")
            ),
        )
    }

    fn unlock_and_load(
        &mut self,
        bytes: Vec<u8>,
        opts: &crate::OpenOptions,
        len: u64,
    ) -> Result<()> {
        let keys = &opts.keys[..];
        let trusted = trusted(opts);
        let cur = self.header.clone();
        let record = journal::decode(
            cur.journal_offset,
            cur.journal_len,
            &cur.container_id,
            cur.table_pages,
            |buf, o| {
                read_struct(
                    self.storage.as_ref(),
                    journal::STRUCTURE,
                    buf,
                    cur.journal_offset + o,
                )
            },
        )?;
        // A record one sequence ahead is a flush that did not finish
        // installing: its header and pages are the newest state. A record
        // of the current sequence is complete (the pages were synced before
        // the header), so it is ignored: replaying it would hide damage to
        // the table from the MAC checks.
        if let Some(rec) = record.as_ref().filter(|r| r.sequence == cur.sequence + 1) {
            let at = cur.journal_offset + journal::RECORD_HEADER as u64;
            if let Ok(h) = Header::decode(&rec.header, at, len)
                && h.container_id == cur.container_id
                && h.sequence == rec.sequence
                && let Ok(u) = unlock(&h, &rec.header, at, keys)
            {
                // Its MAC verified: the journaled header is judged like a
                // header copy, and a bad signature is tampering.
                let status = signature::verify(&h, &rec.header, at, &trusted)?;
                self.judge(status, opts)?;
                return self.finish_load(h, rec.header.clone(), Some(rec), u, keys);
            }
        }
        let at = COPY_OFFSETS[self.current_copy];
        let u = unlock(&cur, &bytes, at, keys)?;
        let status = signature::verify(&cur, &bytes, at, &trusted)?;
        self.judge(status, opts)?;
        self.finish_load(cur, bytes, None, u, keys)
    }

    fn finish_load(
        &mut self,
        h: Header,
        bytes: Vec<u8>,
        record: Option<&journal::Record>,
        (mk, key, data_keys): (MasterKey, Fingerprint, Vec<DataKey>),
        keys: &[Arc<PrivateKey>],
    ) -> Result<()> {
        let pages = h.table_pages as usize;
        let mut tbl = vec![0u8; pages * PAGE_SIZE];
        read_struct(self.storage.as_ref(), TABLE, &mut tbl, h.table_offset)?;
        let mut replay_pages = Vec::new();
        if let Some(rec) = record {
            for (p, page) in &rec.pages {
                let dst = &mut tbl[*p as usize * PAGE_SIZE..(*p as usize + 1) * PAGE_SIZE];
                if dst != &page[..] {
                    dst.copy_from_slice(page);
                    replay_pages.push(*p);
                }
            }
        }
        let mut macs = Vec::with_capacity(pages);
        let mut bad_pages = BTreeMap::new();
        let blocks = h.blocks() as usize;
        let mut entries = Vec::with_capacity(blocks);
        for p in 0..pages {
            let page = &tbl[p * PAGE_SIZE..(p + 1) * PAGE_SIZE];
            macs.push(table::stored_mac(page));
            if let Err(f) = table::verify_page(&mk.table_mac, &h.container_id, p as u64, page) {
                let why = match f {
                    table::PageFault::Mac => "page MAC mismatch: the page was modified or damaged",
                    table::PageFault::Reserved => "reserved bytes after the page MAC are not zero",
                };
                bad_pages.insert(p as u64, why.to_string());
            }
            for i in 0..ENTRIES_PER_PAGE {
                let e = Entry::decode(&page[i * table::ENTRY_SIZE..(i + 1) * table::ENTRY_SIZE]);
                if entries.len() < blocks {
                    entries.push(e);
                }
            }
        }
        if !cipher::ct_eq(&table::root(&macs), &h.table_root) {
            return Err(Error::new(
                ErrorKind::Authentication,
                "table root mismatch: a page MAC was damaged or a table page was replaced by an older copy",
            )
            .at(TABLE, h.table_offset));
        }
        // Entries of verified pages are trusted; still refuse impossible
        // values rather than index with them.
        let mut seen = vec![false; h.slot_count as usize + 1];
        for (i, e) in entries.iter().enumerate() {
            let page = (i / ENTRIES_PER_PAGE) as u64;
            if e.slot == 0 || bad_pages.contains_key(&page) {
                continue;
            }
            let off = h.table_offset
                + ((i / ENTRIES_PER_PAGE) * PAGE_SIZE + (i % ENTRIES_PER_PAGE) * table::ENTRY_SIZE)
                    as u64;
            if e.slot > h.slot_count || seen[e.slot as usize] {
                return Err(Error::corrupt(
                    TABLE,
                    off,
                    format!(
                        "block {i}: slot {} is beyond the {} slots or used twice",
                        e.slot, h.slot_count
                    ),
                ));
            }
            seen[e.slot as usize] = true;
            if !data_keys.iter().any(|k| k.epoch() == e.epoch) {
                return Err(Error::corrupt(
                    TABLE,
                    off,
                    format!("block {i}: epoch {} has no key", e.epoch),
                ));
            }
        }
        let free = (1..=h.slot_count).filter(|&s| !seen[s as usize]).collect();
        let install = record.is_some() && h.sequence != self.header.sequence;
        // The key is verified: a pending journal record may now be installed.
        if self.writable && (install || !replay_pages.is_empty()) {
            for &p in &replay_pages {
                let o = h.table_offset + p * PAGE_SIZE as u64;
                self.storage
                    .write_at(
                        &tbl[p as usize * PAGE_SIZE..(p as usize + 1) * PAGE_SIZE],
                        o,
                    )
                    .map_err(io_err(TABLE, o))?;
            }
            self.storage
                .flush()
                .map_err(io_err(TABLE, h.table_offset))?;
            if install {
                let target = 1 - self.current_copy;
                let o = COPY_OFFSETS[target];
                self.storage
                    .write_at(&bytes, o)
                    .map_err(io_err(header::STRUCTURE, o))?;
                self.storage.flush().map_err(io_err(header::STRUCTURE, o))?;
                self.current_copy = target;
            }
        } else if install {
            self.warnings.push(
                Warning::new(
                    WarningKind::JournalInMemory,
                    format!(
                        "an unfinished flush (sequence {}) was found in the journal and applied in memory; open writable to install it",
                        h.sequence
                    ),
                )
                .at("EVHD journal", h.journal_offset),
            );
        }
        for (p, why) in &bad_pages {
            let at = h.table_offset + p * PAGE_SIZE as u64;
            self.warnings.push(
                Warning::new(
                    WarningKind::UnreadableTablePage,
                    format!("block table page {p} at {at:#x}: {why}; its blocks cannot be read"),
                )
                .at("EVHD block table", at),
            );
        }
        self.header = h;
        // The key that opened the image signs; the others are fallbacks for
        // a commit that removes it from the recipients.
        let mut signers: Vec<Arc<PrivateKey>> = keys.to_vec();
        signers.sort_by_key(|k| k.fingerprint() != key);
        self.state = Some(Unlocked {
            mk,
            key: Some(key),
            signers,
            data_keys,
            entries,
            macs,
            bad_pages,
            dirty: BTreeSet::new(),
            header_dirty: false,
            committed: seen,
            pending_free: Vec::new(),
            free,
        });
        Ok(())
    }
}
