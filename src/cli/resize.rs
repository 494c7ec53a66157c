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
    let done = resize::resize(&a.image, target, a.shrink || a.to_minimum, &opts).map_err(fail1)?;
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
