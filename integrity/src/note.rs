//! C2SP signed notes (signed-note v1.0.0) with Ed25519, the format Go's
//! `golang.org/x/mod/sumdb/note` reads and writes: a text ending in a
//! newline, a blank line, then one line per signature,
//! `— <name> <base64(key id || signature)>`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

/// The algorithm byte for Ed25519 keys.
const ED25519: u8 = 0x01;
/// The em dash that starts every signature line.
const DASH: &str = "\u{2014} ";

/// Why a key or a note was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed key: {0}")]
    Key(&'static str),
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    #[error("no valid signature by {0}")]
    Unverified(String),
}

/// The key ID: the first 4 bytes of SHA-256(name || "\n" || 0x01 || key).
fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ED25519]);
    h.update(public);
    let digest = h.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// As Go's note package has it: not empty, no `+`, no Unicode space (keys
/// are read trimmed, so a name starting or ending in one, U+3000 say, made
/// a key that never parsed back), no control character.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('+')
        && name.chars().all(|c| !c.is_control() && !c.is_whitespace())
}

/// Splits `name+hash+base64` and checks the hash against the key.
fn parse_parts(text: &str) -> Result<(&str, [u8; 4], Vec<u8>), NoteError> {
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(hash), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(NoteError::Key("expected name+hash+key"));
    };
    if !valid_name(name) {
        return Err(NoteError::Key("invalid name"));
    }
    if hash.len() != 8 {
        return Err(NoteError::Key("the hash is not 8 hex digits"));
    }
    let id = u32::from_str_radix(hash, 16).map_err(|_| NoteError::Key("the hash is not hex"))?;
    let key = BASE64
        .decode(key)
        .map_err(|_| NoteError::Key("the key is not base64"))?;
    Ok((name, id.to_be_bytes(), key))
}

/// A verifier key, `name+hash+base64(0x01 || public key)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    key: VerifyingKey,
}

impl NoteVerifier {
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let (name, id, key) = parse_parts(text.trim())?;
        let [alg, public @ ..] = key.as_slice() else {
            return Err(NoteError::Key("empty key"));
        };
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| NoteError::Key("not a 32-byte Ed25519 key"))?;
        if *alg != ED25519 || key_id(name, &public) != id {
            return Err(NoteError::Key("the hash does not match the key"));
        }
        let key = VerifyingKey::from_bytes(&public)
            .map_err(|_| NoteError::Key("not an Ed25519 point"))?;
        Ok(Self {
            name: name.to_owned(),
            id,
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks `note` and returns its text when this key signed it.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let split = note
            .rfind("\n\n")
            .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let (text, signatures) = (&note[..=split], &note[split + 2..]);
        if !signatures.ends_with('\n') {
            return Err(NoteError::Malformed(
                "the signature block does not end in a newline",
            ));
        }
        for line in signatures.lines() {
            let rest = line.strip_prefix(DASH).ok_or(NoteError::Malformed(
                "a signature line does not start with an em dash",
            ))?;
            let (name, encoded) = rest
                .split_once(' ')
                .ok_or(NoteError::Malformed("a signature line has no signature"))?;
            let bytes = BASE64
                .decode(encoded)
                .map_err(|_| NoteError::Malformed("a signature is not base64"))?;
            if name != self.name || bytes.len() != 68 || bytes[..4] != self.id {
                continue;
            }
            let signature = Signature::from_slice(&bytes[4..])
                .map_err(|_| NoteError::Malformed("bad signature length"))?;
            if self.key.verify(text.as_bytes(), &signature).is_ok() {
                return Ok(text);
            }
        }
        Err(NoteError::Unverified(self.name.clone()))
    }
}

impl std::fmt::Display for NoteVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut key = vec![ED25519];
        key.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            u32::from_be_bytes(self.id),
            BASE64.encode(key)
        )
    }
}

/// A signer key, `PRIVATE+KEY+name+hash+base64(0x01 || seed)`.
#[derive(Debug)]
pub struct NoteSigner {
    name: String,
    id: [u8; 4],
    key: SigningKey,
}

impl NoteSigner {
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(NoteError::Key("expected PRIVATE+KEY+"))?;
        let (name, id, key) = parse_parts(rest)?;
        let [alg, seed @ ..] = key.as_slice() else {
            return Err(NoteError::Key("empty key"));
        };
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| NoteError::Key("not a 32-byte Ed25519 seed"))?;
        let key = SigningKey::from_bytes(&seed);
        if *alg != ED25519 || key_id(name, key.verifying_key().as_bytes()) != id {
            return Err(NoteError::Key("the hash does not match the key"));
        }
        Ok(Self {
            name: name.to_owned(),
            id,
            key,
        })
    }

    /// A new key from 32 random bytes.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Self, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::Key("invalid name"));
        }
        let key = SigningKey::from_bytes(&seed);
        let id = key_id(name, key.verifying_key().as_bytes());
        Ok(Self {
            name: name.to_owned(),
            id,
            key,
        })
    }

    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// The signed note for `text`, which must end in a newline.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        Self::sign_all(&[self], text)
    }

    /// The note for `text` signed by every one of `signers`, in order (a
    /// key hand-over carries the old and the new key's signature).
    pub fn sign_all(signers: &[&Self], text: &str) -> Result<String, NoteError> {
        if !text.ends_with('\n') {
            return Err(NoteError::Malformed("the text does not end in a newline"));
        }
        let mut note = format!("{text}\n");
        for signer in signers {
            let mut bytes = signer.id.to_vec();
            bytes.extend_from_slice(&signer.key.sign(text.as_bytes()).to_bytes());
            note.push_str(&format!("{DASH}{} {}\n", signer.name, BASE64.encode(bytes)));
        }
        Ok(note)
    }
}

impl std::fmt::Display for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut key = vec![ED25519];
        key.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            u32::from_be_bytes(self.id),
            BASE64.encode(key)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the fuzz target `audit_note` (docs/development/fuzzing.md):
    /// `keygen --name` took a name starting with a Unicode space, and the
    /// verifier key it printed was refused on reading ("the hash does not
    /// match the key", the name having been trimmed).
    #[test]
    fn names_with_unicode_spaces_are_refused() {
        for name in ["\u{3000}5", "a\u{a0}", "x\u{2003}y", "tab\there"] {
            assert_eq!(
                NoteSigner::from_seed(name, [1; 32]).map(|_| ()),
                Err(NoteError::Key("invalid name")),
                "{name:?}"
            );
        }
        let key = NoteSigner::from_seed("deepseek-audit/h\u{e9}te", [1; 32]).expect("name");
        assert_eq!(
            NoteVerifier::parse(&key.verifier().to_string()),
            Ok(key.verifier())
        );
    }

    // The example in the documentation of golang.org/x/mod/sumdb/note.
    const SIGNER: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const VERIFIER: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const SIGNATURE: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn reproduces_the_go_example_byte_for_byte() {
        let signer = NoteSigner::parse(SIGNER).expect("signer");
        assert_eq!(signer.to_string(), SIGNER);
        assert_eq!(signer.verifier().to_string(), VERIFIER);
        let note = signer.sign(TEXT).expect("sign");
        assert_eq!(note, format!("{TEXT}\n{SIGNATURE}"));
        let verifier = NoteVerifier::parse(VERIFIER).expect("verifier");
        assert_eq!(verifier.open(&note).expect("verifies"), TEXT);
    }

    #[test]
    fn a_changed_letter_or_another_key_fails() {
        let verifier = NoteVerifier::parse(VERIFIER).expect("verifier");
        let note = format!("{TEXT}\n{SIGNATURE}").replacen("cryptography", "cryptograpHy", 1);
        assert_eq!(
            verifier.open(&note),
            Err(NoteError::Unverified("PeterNeumann".to_owned()))
        );
        let other = NoteSigner::from_seed("PeterNeumann", [7; 32]).expect("key");
        assert!(
            other
                .verifier()
                .open(&format!("{TEXT}\n{SIGNATURE}"))
                .is_err()
        );
        assert!(
            NoteVerifier::parse(
                "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
            )
            .is_err()
        );
    }
}
