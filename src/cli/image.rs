//! `create`: a new, empty image as the library plans it.

use vhdkit::OpenOptions;
use vhdkit::convert::{self, plan};
use vhdkit::report::{Format, human_size};
use vhdkit::{Error, convert::plan::SizeProblem};

use super::args::{CreateArgs, format_flag_hint, parse_opt_size};
use super::{Outcome, fail1};

/// `vhdkit create`.
pub fn create(a: CreateArgs) -> Outcome {
    let format = plan::output_format(a.format.map(Format::from), &a.image)
        .map_err(|e| fail1(format_flag_hint(e, "-f/--format")))?;
    let request = plan::CreateRequest {
        disk_type: a.disk_type.map(Into::into),
        block_size: parse_opt_size(a.block_size.as_deref()).map_err(fail1)?,
        parent: a.parent.clone(),
        logical_sector_size: a.sectors.logical,
        physical_sector_size: a.sectors.physical,
    };
    let spec = plan::create_spec(format, &request);
    let parent_size = match &a.parent {
        Some(p) => Some(
            vhdkit::open(p, &OpenOptions::new())
                .map_err(fail1)?
                .virtual_size(),
        ),
        None => None,
    };
    let given = parse_opt_size(a.size.as_deref()).map_err(fail1)?;
    let size = plan::create_size(parent_size, given).map_err(|p| {
        fail1(match (p, &a.parent, &a.size) {
            (SizeProblem::NotTheParents { parent, given }, Some(p), Some(text)) => {
                Error::invalid_argument(format!(
                    "a differencing image has the size of its parent {}, {}; \
                     leave out SIZE ({text} is {})",
                    p.display(),
                    human_size(parent),
                    human_size(given)
                ))
                .with_path(&a.image)
            }
            _ => Error::invalid_argument("a size is needed (e.g. 64M) unless --parent is given"),
        })
    })?;
    if plan::lacks_parent(&spec) {
        return Err(fail1(Error::invalid_argument(
            "a differencing image needs --parent",
        )));
    }
    let out = convert::OutputOptions {
        overwrite: a.force,
        sync: true,
    };
    convert::create_file(&a.image, &spec, size, out, |_| Ok(())).map_err(fail1)?;
    Ok(0)
}
