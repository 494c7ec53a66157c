//! The verbs that change an image's place in a chain or its identity in
//! place: `set-parent`, `rebase`, `set`, and `check --chain`.

use std::path::Path;

use vhdkit::Error;
use vhdkit::reparent::{self, SetParentOptions};

use super::args::ParentArgs;
use super::{Outcome, fail1};

/// `vhdkit set-parent`.
pub fn set_parent(child: &Path, parent: &Path, ignore_id: bool) -> Outcome {
    let out = reparent::set_parent(child, parent, &SetParentOptions { ignore_id }).map_err(fail1)?;
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
pub fn rebase(child: &Path, new_base: &Path) -> Outcome {
    let _ = (child, new_base);
    Err(fail1(Error::new(
        vhdkit::ErrorKind::Unsupported,
        "rebase is not built yet",
    )))
}

/// `vhdkit set`.
pub fn set(image: &Path, reset_id: bool, physical: Option<u32>, force: bool) -> Outcome {
    let _ = (image, reset_id, physical, force);
    Err(fail1(Error::new(
        vhdkit::ErrorKind::Unsupported,
        "set is not built yet",
    )))
}

/// `vhdkit check --chain`.
pub fn check_chain(json: bool, image: &Path, parent: &ParentArgs) -> Outcome {
    parent.warn_force_share(&[image]);
    let opts = parent.options();
    let r = vhdkit::chain_check::check_chain(image, &opts).map_err(fail1)?;
    super::output::emit(json, &r, |r, w| r.write_text(w))?;
    Ok(r.exit_code() as u8)
}
