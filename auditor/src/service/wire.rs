//! The daemon-to-auditor protocol: length-prefixed JSON frames, a
//! [`Request`] per record in and a [`Reply`] per record out. Apart from
//! the serve loop, which the client and the fuzz targets do not need.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::entry::Entry;

/// One record sent by a client.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub tag: u64,
    pub entry: Entry,
}

/// The auditor's answer: the record's sequence number once durable.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub tag: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// Reads a frame's 4-byte big-endian length; `None` at a clean end.
fn read_length(stream: &mut impl Read) -> std::io::Result<Option<usize>> {
    let mut length = [0u8; 4];
    match stream.read_exact(&mut length) {
        Ok(()) => Ok(Some(u32::from_be_bytes(length) as usize)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads one frame: a 4-byte big-endian length, then that many bytes.
pub(crate) fn read_frame(stream: &mut impl Read, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let Some(length) = read_length(stream)? else {
        return Ok(None);
    };
    if length > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {length} bytes over the limit of {max}"),
        ));
    }
    let mut frame = vec![0u8; length];
    stream.read_exact(&mut frame)?;
    Ok(Some(frame))
}

/// Writes one frame.
pub(crate) fn write_frame(stream: &mut impl Write, payload: &[u8]) -> std::io::Result<()> {
    let length =
        u32::try_from(payload.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    stream.write_all(&length.to_be_bytes())?;
    stream.write_all(payload)
}

/// One frame as the service reads it: a record to parse, or one too large
/// to hold, skipped so that the connection stays in step.
pub(super) enum Incoming {
    Frame(Vec<u8>),
    Oversized { length: usize, tag: Option<u64> },
}

/// Reads one frame, or skips one over `max` bytes without holding it. Its
/// tag is read from the prefix every client writes first (`{"tag":N,`), so
/// the refusal reaches the record's writer.
pub(super) fn read_incoming(
    stream: &mut impl Read,
    max: usize,
) -> std::io::Result<Option<Incoming>> {
    let Some(length) = read_length(stream)? else {
        return Ok(None);
    };
    if length <= max {
        let mut frame = vec![0u8; length];
        stream.read_exact(&mut frame)?;
        return Ok(Some(Incoming::Frame(frame)));
    }
    let mut prefix = [0u8; 32];
    let head = prefix.len().min(length);
    stream.read_exact(&mut prefix[..head])?;
    let rest = (length - head) as u64;
    if std::io::copy(&mut stream.take(rest), &mut std::io::sink())? != rest {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(Incoming::Oversized {
        length,
        tag: leading_tag(&prefix[..head]),
    }))
}

/// The tag of a frame that starts `{"tag":N`, if it does.
fn leading_tag(prefix: &[u8]) -> Option<u64> {
    let digits = prefix.strip_prefix(br#"{"tag":"#)?;
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Just the tag of a record that does not parse, to answer it.
#[derive(Deserialize)]
pub(super) struct TagOnly {
    pub(super) tag: u64,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        /// The frame decoder reads whatever a client sends: it never panics,
        /// never returns more than the limit, and refuses larger claims
        /// before allocating.
        #[test]
        fn frames_never_panic_or_exceed_the_limit(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut reader = bytes.as_slice();
            if let Ok(Some(frame)) = read_frame(&mut reader, 16) {
                prop_assert!(frame.len() <= 16);
            }
        }
    }

    #[test]
    fn a_claimed_length_over_the_limit_is_refused() {
        let mut reader: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let err = read_frame(&mut reader, 1024).expect_err("too large");
        assert!(err.to_string().contains("over the limit of 1024"), "{err}");
    }
}
