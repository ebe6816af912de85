//! Hex text of digests and byte strings: the workspace's one encoder and
//! decoder, re-exported as `digest::{hex, unhex, unhex32}`.

/// Lower-case hex, as `sha256sum` prints: the one encoder of the workspace
/// (the auditor calls it on every append, hence no formatter call per byte).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// Decodes what [`hex`] writes, and only that: lower-case digits in pairs.
/// Strict, so that one value has one spelling in a signed file.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    let pairs = text.as_bytes().chunks(2);
    pairs
        .map(|pair| match pair {
            [high, low] => Some(digit(*high)? << 4 | digit(*low)?),
            _ => None,
        })
        .collect()
}

/// [`unhex`] of a SHA-256 digest: exactly 64 lower-case hex digits.
pub fn unhex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    unhex(text)?.try_into().ok()
}

fn digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_only_lower_case_decodes() {
        let bytes = [0xabu8; 32];
        assert_eq!(unhex32(&hex(&bytes)), Some(bytes));
        assert_eq!(unhex(&hex(&[0, 1, 0xfe])), Some(vec![0, 1, 0xfe]));
        assert_eq!(unhex(""), Some(vec![]));
        assert_eq!(unhex32("zz"), None);
        assert_eq!(unhex32(&"AB".repeat(32)), None);
        assert_eq!(unhex32(&"+a".repeat(32)), None);
        assert_eq!(unhex("abc"), None);
    }
}
