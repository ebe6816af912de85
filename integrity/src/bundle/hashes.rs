//! The digests a bundle lists, computed as the bytes stream past.

use std::io::Read;

use sha2::{Digest, Sha256};

use crate::digest::{CHUNK_SIZE, combine_chunks, hex};

/// SHA-256 and, from one chunk up, the integrity database's chunked digest
/// of what passes.
pub(super) struct Hashes {
    whole: Sha256,
    chunk: Sha256,
    in_chunk: u64,
    chunks: Vec<[u8; 32]>,
    size: u64,
}

impl Hashes {
    pub(super) fn new() -> Self {
        Self {
            whole: Sha256::new(),
            chunk: Sha256::new(),
            in_chunk: 0,
            chunks: Vec::new(),
            size: 0,
        }
    }

    pub(super) fn update(&mut self, mut bytes: &[u8]) {
        self.whole.update(bytes);
        self.size += bytes.len() as u64;
        while !bytes.is_empty() {
            let room = usize::try_from(CHUNK_SIZE - self.in_chunk).unwrap_or(usize::MAX);
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.chunk.update(now);
            self.in_chunk += now.len() as u64;
            if self.in_chunk == CHUNK_SIZE {
                self.chunks
                    .push(std::mem::take(&mut self.chunk).finalize().into());
                self.in_chunk = 0;
            }
            bytes = rest;
        }
    }

    /// The size, the SHA-256, and the chunked digest when the content is at
    /// least one chunk long.
    pub(super) fn finish(mut self) -> (u64, String, Option<String>) {
        if self.in_chunk > 0 {
            self.chunks.push(self.chunk.finalize().into());
        }
        let chunked = (self.size >= CHUNK_SIZE)
            .then(|| hex(&combine_chunks(CHUNK_SIZE, self.size, &self.chunks)));
        (self.size, hex(&self.whole.finalize()), chunked)
    }

    /// The same for everything `reader` gives.
    pub(super) fn of_reader(
        reader: &mut impl Read,
    ) -> std::io::Result<(u64, String, Option<String>)> {
        let mut hashes = Self::new();
        let mut buffer = vec![0u8; 256 << 10];
        loop {
            let n = reader.read(&mut buffer)?;
            if n == 0 {
                return Ok(hashes.finish());
            }
            hashes.update(&buffer[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Hashes;
    use crate::digest::{CHUNK_SIZE, chunk_count, chunk_digest, combine_chunks, file_stamp, hex};

    /// The streamed chunked digest is the one the integrity database
    /// computes for the same file, in parallel, by offsets.
    #[test]
    fn the_streamed_chunked_digest_is_the_databases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("weights");
        for size in [CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 5] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            std::fs::write(&path, &data).expect("write");
            let stamp = file_stamp(&path).expect("stamp");
            let chunks: Vec<[u8; 32]> = (0..chunk_count(size, CHUNK_SIZE))
                .map(|c| {
                    let len = CHUNK_SIZE.min(size - c * CHUNK_SIZE);
                    chunk_digest(&path, c * CHUNK_SIZE, len, stamp).expect("chunk")
                })
                .collect();
            let (streamed_size, sha256, chunked) =
                Hashes::of_reader(&mut data.as_slice()).expect("hash");
            assert_eq!(streamed_size, size);
            assert_eq!(sha256, crate::digest::sha256_hex(&data));
            let database = hex(&combine_chunks(CHUNK_SIZE, size, &chunks));
            assert_eq!(chunked, (size >= CHUNK_SIZE).then_some(database), "{size}");
        }
    }
}
