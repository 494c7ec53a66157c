//! The key and recipient listings print JSON in their documented shapes:
//! `key show --json` and `keygen --json` `{fingerprint, short, bits, kind}`,
//! `recipients list --json` an array of `{fingerprint, short, bits, label}`,
//! and their text agrees with the JSON.

mod common;

use common::{keypair, s, vhdkit_stdout as ok};

/// The keys of a JSON object, sorted.
fn keys_of(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    k.sort();
    k
}

#[test]
fn keygen_json_is_key_show_json_of_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.xml");
    let made: serde_json::Value =
        serde_json::from_str(&ok(&["keygen", "--bits", "2048", "--json", "-o", s(&p)])).unwrap();
    assert_eq!(keys_of(&made), ["bits", "fingerprint", "kind", "short"]);
    assert_eq!(made["kind"], "private");
    assert_eq!(made["bits"], 2048);
    let fp = made["fingerprint"].as_str().unwrap();
    assert_eq!(fp.len(), 64);
    assert!(fp.starts_with(made["short"].as_str().unwrap()));
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&["key", "show", "--json", s(&p)])).unwrap();
    assert_eq!(shown, made);
    #[cfg(unix)]
    assert_eq!(common::mode(&p), "600");
}

#[test]
fn key_show_text_and_json_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = keypair(dir.path(), "a");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["key", "show", "--json", s(&public)])).unwrap();
    assert_eq!(keys_of(&json), ["bits", "fingerprint", "kind", "short"]);
    assert_eq!(json["kind"], "public");
    let text = ok(&["key", "show", s(&public)]);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(str::trim))
            .unwrap_or_else(|| panic!("no {name} line in {text}"))
            .to_string()
    };
    assert_eq!(field("fingerprint"), json["fingerprint"].as_str().unwrap());
    assert_eq!(field("short"), json["short"].as_str().unwrap());
    assert_eq!(field("bits"), json["bits"].to_string());
    assert_eq!(field("kind"), "public");
}

#[test]
fn recipients_list_json_has_one_object_per_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    let (_, a) = keypair(dir.path(), "a");
    let (_, b) = keypair(dir.path(), "b");
    std::fs::write(d("src.raw"), vec![7u8; 1 << 20]).unwrap();
    ok(&[
        "convert",
        "-q",
        "-O",
        "evhd",
        "--recipient",
        s(&a),
        "--label",
        "alice",
        "--recipient",
        s(&b),
        s(&d("src.raw")),
        s(&d("e.evhd")),
    ]);
    let list: serde_json::Value =
        serde_json::from_str(&ok(&["recipients", "list", "--json", s(&d("e.evhd"))])).unwrap();
    let list = list.as_array().expect("an array");
    assert_eq!(list.len(), 2);
    for r in list {
        assert_eq!(keys_of(r), ["bits", "fingerprint", "label", "short"]);
        assert_eq!(r["bits"], 2048);
    }
    let labels: Vec<&str> = list.iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["alice", "b.pub.xml"]);
    let a_json: serde_json::Value =
        serde_json::from_str(&ok(&["key", "show", "--json", s(&a)])).unwrap();
    assert_eq!(list[0]["fingerprint"], a_json["fingerprint"]);
    assert_eq!(list[0]["short"], a_json["short"]);
    // The text lists the same keys, in the same order.
    let text = ok(&["recipients", "list", s(&d("e.evhd"))]);
    let fprs: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let json_fprs: Vec<&str> = list
        .iter()
        .map(|r| r["fingerprint"].as_str().unwrap())
        .collect();
    assert_eq!(fprs, json_fprs);
}
