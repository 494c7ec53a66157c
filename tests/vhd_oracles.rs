//! Interoperability with readers and writers nobody here wrote:
//! images vhdkit writes are read back by qemu-img (`-f vpc`) and libvhdi
//! (`vhdiinfo`, `pyvhdi`) with the same size and bytes, and images qemu-img
//! writes read identically in vhdkit.

mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::*;
use vhdkit::VhdBuilder;
use vhdkit::VirtualDisk;
use vhdkit::unstable::vhd::create;

/// 10 MiB: not a CHS size (CHS gives 10479616).
const NOT_CHS: u64 = 10 << 20;
/// A size the CHS algorithm describes exactly
/// (302 cylinders, 4 heads, 17 sectors: qemu's choice for 10M).
const CHS_EXACT: u64 = 302 * 4 * 17 * 512;

fn assert_chs_exact() {
    let g = vhdkit::unstable::vhd::geometry::Geometry::for_size(CHS_EXACT);
    assert_eq!(g.size(), CHS_EXACT);
    assert_ne!(
        vhdkit::unstable::vhd::geometry::Geometry::for_size(NOT_CHS).size(),
        NOT_CHS
    );
}

/// Write `data` into `disk` in uneven pieces (unaligned, crossing blocks).
fn fill(disk: &mut dyn VirtualDisk, data: &[u8], seed: u64) {
    let mut rng = Rng::new(seed);
    let mut pos = 0usize;
    while pos < data.len() {
        let n = (1 + rng.below(1_500_000) as usize).min(data.len() - pos);
        disk.write_at(&data[pos..pos + n], pos as u64).unwrap();
        pos += n;
    }
    disk.flush().unwrap();
}

/// Everything the oracles can say about a VHD that should hold `expect`.
fn assert_oracles_read(path: &Path, expect: &[u8], what: &str) {
    let size = expect.len() as u64;
    assert_eq!(info_json(path)["virtual_size"], size, "{what}: our size");
    if require_tool("qemu-img") {
        assert_eq!(
            qemu_virtual_size(path),
            size,
            "{what}: qemu-img virtual size"
        );
        let q = qemu_read_vpc(path);
        assert_eq!(q.len(), expect.len(), "{what}: qemu-img raw length");
        assert!(q == expect, "{what}: qemu-img reads other bytes");
    }
    if require_tool("vhdiinfo") {
        assert_eq!(
            vhdiinfo_media_size(path),
            size,
            "{what}: vhdiinfo media size"
        );
    }
    if require_tool("pyvhdi") {
        let (n, l) = pyvhdi_read(&[path]);
        assert_eq!(n, size, "{what}: libvhdi media size");
        assert!(l == expect, "{what}: libvhdi reads other bytes");
    }
}

#[test]
fn vhdkit_written_fixed_and_dynamic_read_back_by_qemu_and_libvhdi() {
    assert_chs_exact();
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, u64, Option<u32>)] = &[
        ("fixed", NOT_CHS, None),
        ("fixed", CHS_EXACT, None),
        ("dynamic", NOT_CHS, Some(2 << 20)),
        ("dynamic", CHS_EXACT, Some(2 << 20)),
        ("dynamic", NOT_CHS, Some(512 << 10)),
        ("dynamic", CHS_EXACT, Some(512 << 10)),
    ];
    for (i, &(kind, size, bs)) in cases.iter().enumerate() {
        let what = format!("{kind} {size} block {bs:?}");
        let path = dir.path().join(format!("{i}.vhd"));
        let mut b = VhdBuilder::new(size);
        b = if kind == "fixed" {
            b.fixed()
        } else {
            b.dynamic()
        };
        if let Some(bs) = bs {
            b = b.block_size(bs);
        }
        let data = mixed_content(size as usize, i as u64);
        let mut disk = create(&path, b).unwrap();
        fill(&mut disk, &data, i as u64);
        drop(disk);
        assert_eq!(read_image(&path), data, "{what}: vhdkit reads back");
        assert_oracles_read(&path, &data, &what);
        let v = info_json(&path);
        assert_eq!(v["type"], kind);
        if kind == "dynamic" {
            // Whole zero blocks of the content stay unallocated.
            let bs = u64::from(bs.unwrap());
            let zero_blocks = data
                .chunks(bs as usize)
                .filter(|c| c.iter().all(|&b| b == 0))
                .count() as u64;
            let total = size.div_ceil(bs);
            assert_eq!(
                v["vhd"]["blocks"]["allocated"].as_u64().unwrap(),
                total - zero_blocks,
                "{what}"
            );
        }
        let check = vhdkit(["check".as_ref(), path.as_os_str()]);
        assert_eq!(
            check.status.code(),
            Some(0),
            "{what}: {:?}",
            code_out_err(&check)
        );
    }
}

#[test]
fn vhdkit_written_differencing_chain_read_back_by_libvhdi() {
    let dir = tempfile::tempdir().unwrap();
    for (i, size) in [NOT_CHS, CHS_EXACT].into_iter().enumerate() {
        let base = dir.path().join(format!("base{i}.vhd"));
        let mid = dir.path().join(format!("mid{i}.vhd"));
        let top = dir.path().join(format!("top{i}.vhd"));
        let mut model = mixed_content(size as usize, 100 + i as u64);
        let mut d = create(&base, VhdBuilder::new(size).block_size(512 << 10)).unwrap();
        fill(&mut d, &model, 1);
        drop(d);

        // Two levels of differencing, each overwriting unaligned pieces
        // (some all-zero, which must hide the parent's bytes).
        let mut rng = Rng::new(200 + i as u64);
        for (child, parent) in [(&mid, &base), (&top, &mid)] {
            let mut d = create(child, VhdBuilder::new(0).differencing(parent)).unwrap();
            assert_eq!(d.virtual_size(), size);
            for k in 0..25 {
                let off = rng.below(size) as usize;
                let len = (1 + rng.below(900_000) as usize).min(size as usize - off);
                let mut piece = vec![0u8; len];
                if k % 3 != 0 {
                    rng.fill(&mut piece);
                }
                d.write_at(&piece, off as u64).unwrap();
                model[off..off + len].copy_from_slice(&piece);
            }
            d.flush().unwrap();
        }
        assert_eq!(read_image(&top), model, "vhdkit reads its chain");
        assert_eq!(info_json(&top)["parent"]["found"], true);
        if require_tool("vhdiinfo") {
            assert_eq!(vhdiinfo_media_size(&top), size);
        }
        if require_tool("pyvhdi") {
            let (n, l) = pyvhdi_read(&[&top, &mid, &base]);
            assert_eq!(n, size);
            assert!(l == model, "libvhdi reads the chain differently");
        }
        if require_tool("qemu-img") {
            // qemu reads differencing VHDs as plain dynamic ones (format
            // notes); only its size can be compared.
            assert_eq!(qemu_virtual_size(&top), size);
        }
    }
}

#[test]
fn cli_created_and_converted_images_read_back_by_qemu_and_libvhdi() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = 6 << 20;
    let data = mixed_content(size, 42);
    let raw = d.join("src.raw");
    write_raw(&raw, &data);
    for (name, args) in [
        ("fixed.vhd", vec!["-t", "fixed"]),
        ("dyn2m.vhd", vec!["-t", "dynamic", "--block-size", "2M"]),
        ("dyn512k.vhd", vec!["--block-size", "512K"]),
    ] {
        let out = d.join(name);
        let mut a: Vec<&OsStr> = vec!["convert".as_ref(), "-q".as_ref()];
        a.extend(args.iter().map(|s| OsStr::new(*s)));
        a.push(raw.as_os_str());
        a.push(out.as_os_str());
        vhdkit_ok(&a);
        assert_oracles_read(&out, &data, name);
    }

    // `create` then `write` of a few patterns, CHS-exact size.
    let img = d.join("created.vhd");
    vhdkit_ok([
        "create".as_ref(),
        "--block-size".as_ref(),
        "512K".as_ref(),
        img.as_os_str(),
        CHS_EXACT.to_string().as_ref(),
    ]);
    let mut model = vec![0u8; CHS_EXACT as usize];
    for (off, byte, len) in [
        (1000u64, 0xabu8, 700_000usize),
        (CHS_EXACT - 513, 0x11, 513),
    ] {
        vhdkit_ok([
            "write".as_ref(),
            img.as_os_str(),
            "--offset".as_ref(),
            off.to_string().as_ref(),
            "--pattern".as_ref(),
            format!("{byte:#x}").as_ref(),
            "--length".as_ref(),
            len.to_string().as_ref(),
        ] as [&OsStr; 8]);
        model[off as usize..off as usize + len].fill(byte);
    }
    assert_oracles_read(&img, &model, "create + write");

    // A differencing image made by `create --parent` and filled by `write --input`.
    let child = d.join("child.vhd");
    vhdkit_ok([
        "create".as_ref(),
        "--parent".as_ref(),
        img.as_os_str(),
        child.as_os_str(),
    ] as [&OsStr; 4]);
    let piece = mixed_content(5000, 9);
    let input = d.join("piece.bin");
    write_raw(&input, &piece);
    vhdkit_ok([
        "write".as_ref(),
        child.as_os_str(),
        "--offset".as_ref(),
        "777".as_ref(),
        "--input".as_ref(),
        input.as_os_str(),
    ] as [&OsStr; 6]);
    model[777..777 + piece.len()].copy_from_slice(&piece);
    assert_eq!(read_image(&child), model);
    if require_tool("pyvhdi") {
        let (n, l) = pyvhdi_read(&[&child, &img]);
        assert_eq!(n, CHS_EXACT);
        assert!(l == model, "libvhdi reads the CLI-made chain differently");
    }
}

/// Images written by qemu-img: `create` of both subformats with and
/// without `force_size`, and `convert -O vpc` of mixed content.
#[test]
fn qemu_written_images_read_identically() {
    if !require_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("mixed.raw");
    // Not a multiple of anything in particular, and not a CHS size.
    let data = mixed_content(10_000_000 - 10_000_000 % 512, 5);
    write_raw(&raw, &data);
    let mut n = 0;
    for sub in ["fixed", "dynamic"] {
        for force in [false, true] {
            let opts = if force {
                format!("subformat={sub},force_size=on")
            } else {
                format!("subformat={sub}")
            };
            for how in ["create", "convert"] {
                n += 1;
                let what = format!("qemu-img {how} -o {opts}");
                let img = d.join(format!("q{n}.vhd"));
                if how == "create" {
                    qemu_img([
                        "create".as_ref(),
                        "-q".as_ref(),
                        "-f".as_ref(),
                        "vpc".as_ref(),
                        "-o".as_ref(),
                        opts.as_ref(),
                        img.as_os_str(),
                        "10M".as_ref(),
                    ] as [&OsStr; 8]);
                } else {
                    qemu_img([
                        "convert".as_ref(),
                        "-f".as_ref(),
                        "raw".as_ref(),
                        "-O".as_ref(),
                        "vpc".as_ref(),
                        "-o".as_ref(),
                        opts.as_ref(),
                        raw.as_os_str(),
                        img.as_os_str(),
                    ] as [&OsStr; 9]);
                }
                let qsize = qemu_virtual_size(&img);
                let qdata = qemu_read_vpc(&img);
                assert_eq!(qdata.len() as u64, qsize);
                let disk = vhdkit::open(&img, &vhdkit::OpenOptions::new()).unwrap();
                assert_eq!(disk.virtual_size(), qsize, "{what}: virtual size");
                assert!(
                    disk.info().warnings.is_empty(),
                    "{what}: {:?}",
                    disk.info().warnings
                );
                let ours = read_disk(disk.as_ref());
                assert!(ours == qdata, "{what}: content");
                if how == "convert" {
                    assert!(ours[..data.len()] == data[..], "{what}: source content");
                }
                if force {
                    let want = if how == "create" {
                        10 << 20
                    } else {
                        data.len() as u64
                    };
                    assert_eq!(qsize, want, "{what}: force_size keeps the size");
                }
                let check = vhdkit(["check".as_ref(), img.as_os_str()]);
                assert_eq!(
                    check.status.code(),
                    Some(0),
                    "{what}: {:?}",
                    code_out_err(&check)
                );

                // And the other way: vhdkit writes into qemu's layout,
                // qemu reads the result.
                drop(disk);
                let mut disk =
                    vhdkit::open(&img, &vhdkit::OpenOptions::new().writable(true)).unwrap();
                let mut model = ours;
                let mut rng = Rng::new(n);
                for _ in 0..6 {
                    let off = rng.below(qsize) as usize;
                    let len = (1 + rng.below(3_000_000) as usize).min(qsize as usize - off);
                    let mut piece = vec![0u8; len];
                    rng.fill(&mut piece);
                    disk.write_at(&piece, off as u64).unwrap();
                    model[off..off + len].copy_from_slice(&piece);
                }
                disk.flush().unwrap();
                drop(disk);
                assert!(
                    qemu_read_vpc(&img) == model,
                    "{what}: qemu reads our writes"
                );
                assert_eq!(qemu_virtual_size(&img), qsize);
                let check = vhdkit(["check".as_ref(), img.as_os_str()]);
                assert_eq!(
                    check.status.code(),
                    Some(0),
                    "{what} after writes: {:?}",
                    code_out_err(&check)
                );
            }
        }
    }
}

/// Regression: differencing writes used to mark single sectors present,
/// leaving bitmap bytes such as 0xf0 that libvhdi (20210425) misreads,
/// returning zeros instead of the parent's sectors. Sectors now become
/// present in whole bitmap bytes (8 sectors), read from the parent first.
#[test]
fn differencing_bitmap_bytes_are_whole_after_unaligned_writes() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("p.vhd");
    let child = dir.path().join("c.vhd");
    let size = 4u64 << 20;
    let content = mixed_content(size as usize, 11);
    let mut p = create(&parent, VhdBuilder::new(size).block_size(1 << 20)).unwrap();
    p.write_at(&content, 0).unwrap();
    drop(p);
    let mut model = content;
    let mut c = create(&child, VhdBuilder::new(0).differencing(&parent)).unwrap();
    for (off, len) in [
        (777u64, 5000usize),
        (1536, 512),
        (2 << 20, 1),
        ((3 << 20) - 100, 200),
        (size - 1, 1),
    ] {
        let piece = vec![0x5au8; len];
        c.write_at(&piece, off).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&piece);
    }
    c.flush().unwrap();
    drop(c);
    assert_eq!(read_image(&child), model);
    let lay = SparseLayout::read(&child);
    for (i, &e) in lay.bat.iter().enumerate() {
        if e == 0xffff_ffff {
            continue;
        }
        let bm = file_bytes(&child, u64::from(e) * 512, lay.bitmap_size() as usize);
        assert!(
            bm.iter().all(|&b| b == 0 || b == 0xff),
            "block {i}: bitmap has partial bytes"
        );
    }
    if require_tool("pyvhdi") {
        let (_, l) = pyvhdi_read(&[&child, &parent]);
        assert!(l == model, "libvhdi reads the child differently");
    }
}
