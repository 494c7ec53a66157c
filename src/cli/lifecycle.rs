//! The verbs that change an image's place in a chain or its identity in
//! place: `set-parent`, `rebase`, `set`, and `check --chain`.

use std::path::Path;

use vhdkit::reparent::{self, RebaseOptions, SetParentOptions};
use vhdkit::set_identity::{self, SetOptions};

use super::args::ParentArgs;
use super::{Outcome, fail1};

/// `vhdkit set-parent`.
pub fn set_parent(child: &Path, parent: &Path, ignore_id: bool) -> Outcome {
    let out =
        reparent::set_parent(child, parent, &SetParentOptions { ignore_id }).map_err(fail1)?;
    if !out.changed {
        println!(
            "{}: already records {} as its parent; nothing to do",
            child.display(),
            out.parent.display()
        );
        return Ok(0);
    }
    println!(
        "{}: parent set to {} (id {})",
        child.display(),
        out.parent.display(),
        out.parent_id
    );
    if let Some((p, c)) = out.shorter_parent {
        eprintln!(
            "vhdkit: warning: {}: the parent ends at byte {p}, before the child's end ({c}): where \
             the child stores nothing past {p} it reads zeros (it read its old parent there, if \
             that one was larger and held data)",
            child.display()
        );
    }
    if let Some(old) = out.replaced_id {
        eprintln!(
            "vhdkit: warning: {}: the recorded parent id {old} was replaced by the new parent's \
             id {} (--ignore-id): the child now trusts that parent's content",
            child.display(),
            out.parent_id
        );
    }
    Ok(0)
}

/// `vhdkit rebase`.
pub fn rebase(child: &Path, new_base: &Path, force: bool) -> Outcome {
    let out = reparent::rebase_with(child, new_base, &RebaseOptions { force }).map_err(fail1)?;
    println!(
        "{}: rebased onto {} ({} bytes copied from the old chain)",
        child.display(),
        out.set_parent.parent.display(),
        out.copied
    );
    for c in &out.orphaned {
        eprintln!(
            "vhdkit: warning: {} recorded the old DataWriteGuid and no longer opens (--force)",
            c.display()
        );
    }
    Ok(0)
}

/// `vhdkit set`.
pub fn set(image: &Path, reset_id: bool, physical: Option<u32>, force: bool) -> Outcome {
    let opts = SetOptions {
        reset_id,
        physical_sector_size: physical,
        force,
    };
    let out = set_identity::set(image, &opts).map_err(fail1)?;
    if let Some(id) = out.new_id {
        println!("{}: new disk id {id}", image.display());
    }
    if let Some(n) = physical {
        if out.sector_size_changed {
            println!("{}: physical sector size set to {n}", image.display());
        } else {
            println!("{}: physical sector size is already {n}", image.display());
        }
    }
    for c in &out.orphaned {
        eprintln!(
            "vhdkit: warning: {} recorded the old id and no longer opens (--force)",
            c.display()
        );
    }
    Ok(0)
}

/// `vhdkit check --chain`.
pub fn check_chain(json: bool, image: &Path, parent: &ParentArgs) -> Outcome {
    parent.warn_force_share(&[image]);
    let opts = parent.options();
    let r = vhdkit::chain_check::check_chain(image, &opts).map_err(fail1)?;
    super::output::emit(json, &r, |r, w| r.write_text(w))?;
    Ok(r.exit_code() as u8)
}
