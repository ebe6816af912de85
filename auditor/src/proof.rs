//! Inclusion proofs an officer can hand to an assessor: one entry, the
//! signed checkpoint it is included in, and the audit path between them.
//! Checking one needs only the verifier key, not the log.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::merkle::{self, Hash};
use deepseek_integrity::note::NoteVerifier;

/// A self-contained inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InclusionProof {
    /// The entry's canonical line.
    pub entry: String,
    pub seq: u64,
    /// The signed checkpoint note.
    pub checkpoint: String,
    /// The audit path, base64 hashes, leaf to root.
    pub path: Vec<String>,
}

/// Why a proof does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProofError {
    #[error("the checkpoint is not signed by {0}")]
    Signature(String),
    #[error("the checkpoint is malformed: {0}")]
    Checkpoint(String),
    #[error("a path hash is not 32 bytes of base64")]
    Path,
    #[error("entry {seq} is not included in the tree of {size} entries the checkpoint signs")]
    NotIncluded { seq: u64, size: u64 },
}

impl InclusionProof {
    /// The proof of entry `seq` with its audit `path` to the tree a
    /// checkpoint note signs.
    pub(crate) fn new(entry: &[u8], seq: u64, path: &[Hash], checkpoint_note: &str) -> Self {
        Self {
            entry: String::from_utf8_lossy(entry).into_owned(),
            seq,
            checkpoint: checkpoint_note.to_owned(),
            path: path.iter().map(|h| BASE64.encode(h)).collect(),
        }
    }

    /// Checks the signature and the inclusion; returns the checkpoint.
    pub(crate) fn check(&self, verifier: &NoteVerifier) -> Result<Checkpoint, ProofError> {
        let text = verifier
            .open(&self.checkpoint)
            .map_err(|_| ProofError::Signature(verifier.to_string()))?;
        let checkpoint =
            Checkpoint::parse(text).map_err(|e| ProofError::Checkpoint(e.to_string()))?;
        let path = self
            .path
            .iter()
            .map(|h| BASE64.decode(h).ok().and_then(|b| Hash::try_from(b).ok()))
            .collect::<Option<Vec<Hash>>>()
            .ok_or(ProofError::Path)?;
        let leaf = merkle::leaf_hash(self.entry.as_bytes());
        if !merkle::verify_inclusion(&leaf, self.seq, checkpoint.size, &path, &checkpoint.root) {
            return Err(ProofError::NotIncluded {
                seq: self.seq,
                size: checkpoint.size,
            });
        }
        Ok(checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deepseek_integrity::note::NoteSigner;

    #[test]
    fn a_proof_checks_and_a_changed_entry_does_not() {
        let signer = NoteSigner::from_seed("deepseek-audit/test", [5; 32]).expect("key");
        let lines: Vec<Vec<u8>> = (0..13)
            .map(|i| format!("{{\"seq\":{i}}}").into_bytes())
            .collect();
        let leaves: Vec<Hash> = lines.iter().map(|l| merkle::leaf_hash(l)).collect();
        let checkpoint = Checkpoint {
            origin: "deepseek-audit/test".into(),
            size: 13,
            root: merkle::root(&leaves),
            extensions: vec![],
        };
        let note = signer.sign(&checkpoint.text()).expect("sign");
        let proof = InclusionProof::new(&lines[7], 7, &merkle::inclusion_proof(7, &leaves), &note);
        assert_eq!(proof.check(&signer.verifier()), Ok(checkpoint));
        let forged = InclusionProof {
            entry: proof.entry.replace('7', "8"),
            ..proof.clone()
        };
        assert_eq!(
            forged.check(&signer.verifier()),
            Err(ProofError::NotIncluded { seq: 7, size: 13 })
        );
        let other = NoteSigner::from_seed("deepseek-audit/test", [6; 32]).expect("key");
        assert!(matches!(
            proof.check(&other.verifier()),
            Err(ProofError::Signature(_))
        ));
    }
}
