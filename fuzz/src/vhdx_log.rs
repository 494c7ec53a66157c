//! The `vhdx_log` target: arbitrary log regions replayed against a valid
//! image.
//!
//! The input describes log entries (encoded with valid checksums, so that
//! the fuzzer gets past them), where they sit in the circular log, which
//! GUID the header names, and byte patches over the region afterwards. The
//! image is opened read-only (replay in memory) and read-write (replay on
//! disk): both must agree on the content, and the replayed file must open
//! again clean.

use std::sync::{Arc, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use uuid::Uuid;
use vhdkit::MemStorage;
use vhdkit::unstable::chain::Chain;
use vhdkit::unstable::fixed::FixedStruct;
use vhdkit::unstable::vhdx::VhdxDisk;
use vhdkit::unstable::vhdx::log::{EntryParams, Op, encode_entry};
use vhdkit::{OpenOptions, VirtualDisk};

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 4096;
/// Virtual size of the base image.
const SIZE: u64 = 4 * MIB;
/// Most entries, descriptors and patches one input may describe.
const MAX_ENTRIES: usize = 8;
const MAX_OPS: usize = 12;
const MAX_PATCHES: usize = 32;
/// The GUID the entries carry.
const LOG_GUID: Uuid = Uuid::from_u128(0x6c6f_6767_7569_6400_0000_0000_0000_0001);

/// The base image and where its log and current header are.
struct Base {
    file: Vec<u8>,
    log_offset: u64,
    log_length: u64,
    header_offset: u64,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let mem = Arc::new(MemStorage::new());
        let mut disk = vhdkit::VhdxBuilder::new(SIZE)
            .block_size(MIB as u32)
            .create(Box::new(mem.clone()), None)
            .expect("create the base image");
        disk.write_at(&[0x5a; 3 * SECTOR as usize], MIB + 512)
            .expect("write");
        disk.write_at(&[0xa5; SECTOR as usize], 3 * MIB)
            .expect("write");
        disk.close().expect("close");
        drop(disk);
        let d = open(mem.to_vec(), false).expect("the base image opens");
        let s = d.structure();
        let h = &s.slots[s.current];
        Base {
            file: mem.to_vec(),
            log_offset: h.header.log_offset,
            log_length: u64::from(h.header.log_length),
            header_offset: h.offset,
        }
    })
}

fn open(file: Vec<u8>, writable: bool) -> vhdkit::Result<VhdxDisk> {
    let storage = if writable {
        MemStorage::from_vec(file)
    } else {
        MemStorage::read_only(file)
    };
    open_storage(Arc::new(storage), writable)
}

fn open_storage(storage: Arc<MemStorage>, writable: bool) -> vhdkit::Result<VhdxDisk> {
    VhdxDisk::open(
        Box::new(storage),
        None,
        &OpenOptions::new().writable(writable),
        &Chain::default(),
    )
}

/// Which GUID the header names.
#[derive(Debug, Arbitrary)]
pub enum HeaderGuid {
    /// The entries' GUID: the log is replayed.
    Entries,
    /// Nil: no log to replay.
    Nil,
    /// Another GUID: no entry matches.
    Other,
}

/// One update of an entry.
#[derive(Debug, Arbitrary)]
pub enum LogOp {
    /// A data sector of `fill` at the 4 KiB sector `sector` of the file.
    Data { sector: u16, fill: u8 },
    /// `count` zero sectors from the 4 KiB sector `sector`.
    Zero { sector: u16, count: u8 },
}

/// One entry and where it sits.
#[derive(Debug, Arbitrary)]
pub struct LogEntry {
    /// 4 KiB sector of the log where the entry starts.
    pub position: u16,
    /// Sequence number, counted from a fixed base.
    pub sequence: u8,
    /// 4 KiB sector of the log the tail points at.
    pub tail: u16,
    /// Flushed and last file offsets, in 4 KiB sectors.
    pub flushed: u16,
    pub last: u16,
    pub ops: Vec<LogOp>,
}

/// A whole input.
#[derive(Debug, Arbitrary)]
pub struct LogInput {
    pub guid: HeaderGuid,
    pub entries: Vec<LogEntry>,
    /// (byte of the log region, value) written after the entries.
    pub patches: Vec<(u32, u8)>,
}

/// The image `input` describes.
pub fn build(input: &LogInput) -> Vec<u8> {
    let b = base();
    let mut file = b.file.clone();
    let file_sectors = file.len() as u64 / SECTOR;
    let log_sectors = b.log_length / SECTOR;
    for e in input.entries.iter().take(MAX_ENTRIES) {
        let ops: Vec<Op> = e
            .ops
            .iter()
            .take(MAX_OPS)
            .map(|op| match *op {
                // Offsets reach a little past the end, to extend the file.
                LogOp::Data { sector, fill } => Op::Data {
                    offset: u64::from(sector) % (file_sectors + 16) * SECTOR,
                    sector: vec![fill; SECTOR as usize].into(),
                },
                LogOp::Zero { sector, count } => Op::Zero {
                    offset: u64::from(sector) % (file_sectors + 16) * SECTOR,
                    length: u64::from(count) * SECTOR,
                },
            })
            .collect();
        let params = EntryParams {
            sequence_number: 0x1000 + u64::from(e.sequence),
            tail: (u64::from(e.tail) % log_sectors * SECTOR) as u32,
            log_guid: LOG_GUID,
            flushed_file_offset: u64::from(e.flushed) * SECTOR,
            last_file_offset: u64::from(e.last) * SECTOR,
        };
        let bytes = encode_entry(&params, &ops);
        // The log is circular: an entry may wrap around its end.
        let start = u64::from(e.position) % log_sectors;
        for (i, s) in bytes.chunks(SECTOR as usize).enumerate() {
            let at = b.log_offset + (start + i as u64) % log_sectors * SECTOR;
            file[at as usize..at as usize + s.len()].copy_from_slice(s);
        }
    }
    for &(at, v) in input.patches.iter().take(MAX_PATCHES) {
        file[(b.log_offset + u64::from(at) % b.log_length) as usize] = v;
    }
    let guid = match input.guid {
        HeaderGuid::Entries => LOG_GUID,
        HeaderGuid::Nil => Uuid::nil(),
        HeaderGuid::Other => Uuid::from_u128(7),
    };
    let h = b.header_offset as usize;
    let mut header = vhdkit::unstable::vhdx::header::Header::parse(&file[h..], b.header_offset)
        .expect("the base header parses");
    header.set_log_guid(guid);
    header.checksum = header.compute_checksum();
    file[h..h + vhdkit::unstable::vhdx::header::HEADER_SIZE].copy_from_slice(&header.to_bytes());
    file
}

fn read_all(disk: &dyn VirtualDisk) -> vhdkit::Result<Vec<u8>> {
    let mut v = vec![0u8; disk.virtual_size() as usize];
    disk.read_at(&mut v, 0)?;
    Ok(v)
}

/// Replay the input's log in memory and on disk; both must agree.
pub fn run(input: &LogInput) {
    let file = build(input);
    let mut report = vhdkit::CheckReport::default();
    let _ = vhdkit::unstable::vhdx::check::check(
        &MemStorage::read_only(file.clone()),
        &mut report,
        false,
    );

    let in_memory = open(file.clone(), false).and_then(|d| {
        let _ = d.info();
        let _ = d.map(0, d.virtual_size());
        read_all(&d)
    });
    let mem = Arc::new(MemStorage::from_vec(file));
    let Ok(mut disk) = open_storage(mem.clone(), true) else {
        return;
    };
    let on_disk = read_all(&disk);
    if let (Ok(a), Ok(b)) = (&in_memory, &on_disk) {
        assert!(a == b, "replay in memory and on disk disagree");
    }
    // A replayed image opens again, with nothing left to replay.
    let Ok(replayed) = on_disk else { return };
    if disk.close().is_err() {
        return;
    }
    drop(disk);
    let again = open(mem.to_vec(), false).expect("a replayed image opens");
    assert_ne!(
        again.log_replay(),
        vhdkit::unstable::vhdx::LogReplay::InMemory,
        "a log left to replay after a read-write open"
    );
    assert!(
        read_all(&again).expect("read") == replayed,
        "content changed on reopen"
    );
}

/// Decode an input from fuzzer bytes.
pub fn run_bytes(data: &[u8]) {
    if let Ok(input) = LogInput::arbitrary_take_rest(Unstructured::new(data)) {
        run(&input);
    }
}
