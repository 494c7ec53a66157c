//! `keygen` and `key`: making, showing and converting key files, saved by
//! the library (private keys 0600, never through a symbolic link).

use std::path::Path;

use vhdkit::keyfile::report::{KeyReport, write_key_text};
use vhdkit::keyfile::{KeyEncoding, save_private, save_public};
use vhdkit::{KeyFile, PrivateKey};

use super::args::KeyCmd;
use super::open::refuse_same_file;
use super::output::emit;
use super::{Outcome, fail1};

/// `vhdkit keygen`.
pub fn keygen(bits: usize, output: &Path, force: bool, json: bool) -> Outcome {
    let key = PrivateKey::generate(bits).map_err(fail1)?;
    save_private(output, &key, KeyEncoding::Xml, force).map_err(fail1)?;
    if json {
        emit(true, &KeyReport::of_private(&key), write_key_text)?;
    } else {
        println!(
            "{}  {} bits  {}",
            key.fingerprint().short(),
            bits,
            output.display()
        );
    }
    Ok(0)
}

/// `vhdkit key show|public|export-pem`.
pub fn run(cmd: KeyCmd) -> Outcome {
    let read = |p: &Path| KeyFile::read(p).map_err(fail1);
    match cmd {
        KeyCmd::Show { key, json } => {
            let k = read(&key)?;
            emit(json, &KeyReport::of_file(&k), write_key_text)?;
            Ok(0)
        }
        KeyCmd::Public { key, output, force } => {
            refuse_same_file(&key, &output).map_err(fail1)?;
            let k = read(&key)?;
            save_public(&output, k.public(), KeyEncoding::Xml, force).map_err(fail1)?;
            Ok(0)
        }
        KeyCmd::ExportPem {
            key,
            output,
            public,
            force,
        } => {
            refuse_same_file(&key, &output).map_err(fail1)?;
            let k = read(&key)?;
            if public {
                save_public(&output, k.public(), KeyEncoding::Pem, force).map_err(fail1)?;
            } else {
                let k = k.into_private().map_err(fail1)?;
                save_private(&output, &k, KeyEncoding::Pem, force).map_err(fail1)?;
            }
            Ok(0)
        }
    }
}
