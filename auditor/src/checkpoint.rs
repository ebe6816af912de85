//! Checkpoints in the C2SP tlog-checkpoint v1.0.0 format: the origin line,
//! the tree size in decimal, the base64 root hash, then optional extension
//! lines; signed as a note (see `note`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::merkle::Hash;

/// One checkpoint: the log `origin` had `size` entries with this `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// Extension lines, kept verbatim.
    pub extensions: Vec<String>,
}

/// Why a checkpoint body cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed checkpoint: {0}")]
pub struct CheckpointError(&'static str);

impl Checkpoint {
    /// The note text (ends in a newline), ready to be signed.
    pub fn text(&self) -> String {
        let mut text = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root)
        );
        for line in &self.extensions {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// Parses the text of a (verified) note.
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        let body = text
            .strip_suffix('\n')
            .ok_or(CheckpointError("no final newline"))?;
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(CheckpointError("no origin line"))?;
        let size = lines.next().ok_or(CheckpointError("no size line"))?;
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(CheckpointError("the size is not a decimal number"));
        }
        let size = size
            .parse()
            .map_err(|_| CheckpointError("the size is too large"))?;
        let root = BASE64
            .decode(lines.next().ok_or(CheckpointError("no root hash line"))?)
            .ok()
            .and_then(|r| <Hash>::try_from(r).ok())
            .ok_or(CheckpointError("the root hash is not 32 bytes of base64"))?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(CheckpointError("an empty extension line"));
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_malformed_bodies() {
        let checkpoint = Checkpoint {
            origin: "deepseek-audit/host".into(),
            size: 12,
            root: [9; 32],
            extensions: vec![],
        };
        let text = checkpoint.text();
        assert_eq!(
            text,
            "deepseek-audit/host\n12\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\n"
        );
        assert_eq!(Checkpoint::parse(&text), Ok(checkpoint));
        for bad in [
            "x\n012\nAAAA\n",
            "x\n12\nAAAA\n",
            "\n1\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\n",
            "x\n-1\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\n",
        ] {
            assert!(Checkpoint::parse(bad).is_err(), "{bad:?}");
        }
    }
}
