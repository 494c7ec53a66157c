//! `vhdkit compact`: give back the space of blocks that read as zeros and
//! shrink the file (Optimize-VHD). The work is [`vhdkit::compact`]'s.

use vhdkit::compact::{CompactReport, Mode};
use vhdkit::report::human_size;

use super::args::CompactArgs;
use super::{Outcome, fail1};

pub fn compact(a: CompactArgs) -> Outcome {
    let (image, parent) = (&a.image, &a.parent);
    parent.refuse_force_share(image, "compact")?;
    let opts = parent.options();
    parent.refuse_key_for(&[image], &opts).map_err(fail1)?;
    let mode = if a.quick { Mode::Quick } else { Mode::Full };
    let r = vhdkit::compact::compact(image, &opts, mode).map_err(fail1)?;
    if a.json {
        let text = serde_json::to_string_pretty(&r).expect("a report serialises");
        println!("{text}");
    } else {
        print!("{}", describe(&r, mode));
    }
    Ok(0)
}

/// The report for people.
fn describe(r: &CompactReport, mode: Mode) -> String {
    let mut s = format!(
        "{} block(s) that read as zeros dropped, {} block(s) moved\n",
        r.blocks_dropped, r.blocks_moved
    );
    if r.blocks_dropped == 0 && r.blocks_moved == 0 && r.size_after < r.size_before {
        // Space freed earlier (blocks unmapped by writes of zeros, a
        // shrink, an interrupted compact) lay at the end of the file.
        s += "the file was cut after its last block in use: the space past it was free\n";
    }
    s += &format!("file size before: {}\n", human_size(r.size_before));
    s += &format!("file size after:  {}\n", human_size(r.size_after));
    if mode == Mode::Quick {
        s += &format!("holes punched: {}\n", human_size(r.bytes_punched));
        if r.punch_refused {
            s += "the file system does not punch holes: the space of dropped blocks stays allocated\n";
        }
    }
    s
}
