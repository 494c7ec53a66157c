//! Arbitrary bytes as a key file (KeyPair.xml or PEM). A key that parses
//! must write back in the .NET form and parse again to the same key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhdkit::evhd::keys::KeyFile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(key) = KeyFile::parse(text) else {
        return;
    };
    let fp = key.public().fingerprint().hex();
    let again = match &key {
        KeyFile::Private(k) => KeyFile::parse(&k.to_xml()),
        KeyFile::Public(k) => KeyFile::parse(&k.to_xml()),
    }
    .expect("a key vhdkit wrote parses");
    assert_eq!(again.public().fingerprint().hex(), fp);
});
