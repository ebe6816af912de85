//! Server-sent events as deepseekd streams them: the `data` of each event,
//! whatever way the bytes were cut into chunks. Bounded: an event may hold
//! at most [`MAX_EVENT_BYTES`].

use crate::error::Error;

/// The longest event kept. A chunk of the daemon carries one piece of text
/// (a few tokens) and, at most, its logprobs: far less than this.
pub(crate) const MAX_EVENT_BYTES: usize = 1 << 20;

/// Collects bytes and hands out each complete event's data.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    /// Bytes of a line not yet ended.
    line: Vec<u8>,
    /// The `data` lines of the event so far, joined with `\n`.
    data: Option<String>,
}

impl Decoder {
    /// Feeds `bytes`; returns the data of the events they complete.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, Error> {
        let mut events = Vec::new();
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.take(&rest[..end])?;
            let line = std::mem::take(&mut self.line);
            if let Some(data) = self.line_done(&line)? {
                events.push(data);
            }
            rest = &rest[end + 1..];
        }
        self.take(rest)?;
        Ok(events)
    }

    fn take(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let held = self.line.len() + self.data.as_ref().map_or(0, String::len);
        if held + bytes.len() > MAX_EVENT_BYTES {
            return Err(Error::Protocol(format!(
                "an event of the stream is over {MAX_EVENT_BYTES} bytes"
            )));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// One line, without its `\n`: a blank line ends the event.
    fn line_done(&mut self, line: &[u8]) -> Result<Option<String>, Error> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Ok(self.data.take());
        }
        let line = std::str::from_utf8(line)
            .map_err(|e| Error::Protocol(format!("an event is not UTF-8: {e}")))?;
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        // Comments (`:` first) and fields other than data are not used.
        if field == "data" {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_whole_however_the_bytes_are_cut() {
        let stream = b"data: {\"a\":1}\n\n: comment\nevent: x\ndata: two\r\ndata: lines\r\n\r\ndata: [DONE]\n\n";
        let whole = Decoder::default().push(stream).expect("whole");
        assert_eq!(whole, ["{\"a\":1}", "two\nlines", "[DONE]"]);
        for size in 1..stream.len() {
            let mut decoder = Decoder::default();
            let mut events = Vec::new();
            for piece in stream.chunks(size) {
                events.extend(decoder.push(piece).expect("piece"));
            }
            assert_eq!(events, whole, "pieces of {size}");
        }
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut decoder = Decoder::default();
        let line = vec![b'x'; MAX_EVENT_BYTES / 2];
        decoder.push(b"data: ").expect("start");
        decoder.push(&line).expect("half");
        assert!(matches!(decoder.push(&line), Err(Error::Protocol(_))));
    }
}
