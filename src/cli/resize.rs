//! `vhdkit resize`: change an image's virtual size in place.

use vhdkit::resize::{self, Target};

use super::args::{ResizeArgs, parse_size};
use super::{Outcome, fail1};

/// `vhdkit resize IMAGE SIZE [--shrink] | --to-minimum`.
pub fn resize(a: ResizeArgs) -> Outcome {
    a.parent.refuse_force_share(&a.image, "resize")?;
    let target = match &a.size {
        Some(s) => Target::Size(parse_size(s).map_err(fail1)?),
        None => Target::Minimum,
    };
    let opts = a.parent.options();
    if !a.force {
        refuse_with_children(&a.image, &opts)?;
    }
    let done = resize::resize(&a.image, target, a.shrink || a.to_minimum, &opts).map_err(fail1)?;
    if let Target::Size(asked) = target
        && asked != done.new_size
    {
        eprintln!(
            "vhdkit: note: {asked} bytes is not a whole number of the disk's sectors; rounded up to {}",
            done.new_size
        );
    }
    if done.old_size == done.new_size {
        println!(
            "{}: already {} bytes{}",
            a.image.display(),
            done.new_size,
            if done.gpt_moved {
                "; GPT backup moved to the last sectors"
            } else {
                ""
            }
        );
    } else {
        println!(
            "{}: resized from {} to {} bytes{}",
            a.image.display(),
            done.old_size,
            done.new_size,
            if done.gpt_moved {
                "; GPT backup moved to the last sectors"
            } else {
                ""
            }
        );
    }
    Ok(0)
}

/// Refuse to resize `image` while differencing images beside it record it
/// as their parent: a VHDX parent's resize gives it a new data write id, so
/// they no longer open; a VHD parent keeps its id, so a shrink would show
/// them zeros where its data was.
fn refuse_with_children(
    image: &std::path::Path,
    opts: &vhdkit::OpenOptions,
) -> Result<(), (vhdkit::Error, u8)> {
    // An image that does not open is refused by the resize itself, with
    // its own reason.
    let Ok(disk) = vhdkit::open(image, &opts.clone().print_warnings(false)) else {
        return Ok(());
    };
    let Some(id) = disk.parent_link_id() else {
        return Ok(());
    };
    drop(disk);
    let scan = vhdkit::unstable::parent::children_beside(image, id);
    if scan.children.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = scan
        .children
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    Err(fail1(vhdkit::Error::invalid_argument(format!(
        "{} is the recorded parent of {} beside it, which would no longer read what they \
         were made over; nothing was changed (--force resizes anyway)",
        image.display(),
        names.join(", ")
    ))))
}
