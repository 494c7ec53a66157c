//! Sizes as people write them: `64M`, `10G`, `1.5T`, `4096`.

use crate::error::{Error, Result};

/// Parse a size with an optional binary suffix (K, M, G, T, P; an optional
/// trailing `B` or `iB` is accepted). Plain numbers are bytes; `0x` numbers
/// are hexadecimal bytes (as `map` and error messages print offsets).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_err(|_| {
            Error::invalid_argument(format!("cannot parse hexadecimal number {s:?}"))
        });
    }
    let lower = t.to_ascii_lowercase();
    let body = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (num, shift) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 10),
        Some('m') => (&body[..body.len() - 1], 20),
        Some('g') => (&body[..body.len() - 1], 30),
        Some('t') => (&body[..body.len() - 1], 40),
        Some('p') => (&body[..body.len() - 1], 50),
        _ => (body, 0),
    };
    let bad = || {
        Error::invalid_argument(format!(
            "cannot parse size {s:?} (examples: 4096, 64M, 10G)"
        ))
    };
    // Only digits with at most one decimal point: Rust's number parsers
    // would also take `+5`, `1e3`, `inf` and `nan`, which no size is.
    let digits = num.bytes().filter(u8::is_ascii_digit).count();
    let dots = num.bytes().filter(|&b| b == b'.').count();
    if digits == 0 || digits + dots != num.len() || dots > 1 {
        return Err(bad());
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(1u64 << shift).ok_or_else(bad);
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    let v = f * (1u64 << shift) as f64;
    if !(0.0..1.8e19).contains(&v) || v.fract() != 0.0 {
        return Err(bad());
    }
    Ok(v as u64)
}

/// A note for a size written with a decimal-looking unit (`10GB`, `64MB`,
/// `4kB`), which [`parse_size`] reads as binary (10 GiB), as qemu-img
/// does: a person may have meant 10^10 bytes, so the command says which it
/// took. `None` for sizes without such a unit (`10G`, `10GiB`, `4096`).
pub fn binary_unit_note(s: &str) -> Option<String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower.strip_suffix('b')?;
    let unit = body.chars().last()?;
    if !"kmgtp".contains(unit) || body.ends_with("ib") {
        return None;
    }
    let n = parse_size(t).ok()?;
    let num = &t[..body.len() - 1];
    let binary = format!("{num}{}iB", unit.to_ascii_uppercase());
    Some(format!(
        "{t} is read as {binary} = {n} bytes (binary units, as qemu-img reads them); \
         write {num}{} or {binary} to say so",
        unit.to_ascii_uppercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
        assert_eq!(parse_size("0x1ff").unwrap(), 0x1ff);
        assert!(parse_size("0xzz").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999P").is_err());
        for bad in ["1e3", "+5", "inf", "nan", "1.2.3", ".", "-1", "1 k", ""] {
            assert!(parse_size(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(parse_size(".5k").unwrap(), 512);
    }

    #[test]
    fn decimal_looking_units_are_noted() {
        assert_eq!(parse_size("10GB").unwrap(), 10 << 30);
        let n = binary_unit_note("10GB").unwrap();
        assert!(n.contains("10GiB") && n.contains("10737418240"), "{n}");
        assert!(binary_unit_note("64mb").unwrap().contains("64MiB"));
        for quiet in ["10G", "10GiB", "4096", "0x1b", "1.5k", "lots"] {
            assert_eq!(binary_unit_note(quiet), None, "{quiet}");
        }
    }
}
