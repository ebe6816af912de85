//! fs-verity file digests, computed in userspace.
//!
//! Where the kernel supports fs-verity (ext4, f2fs, btrfs, ...), a file with verity enabled has a
//! digest that the kernel itself measures and enforces: every read of the file is checked against
//! a Merkle tree whose root is bound into that digest. Recording the digest gives operators the
//! value to enable and enforce verity with (`fsverity enable`, signed digests), and `check`
//! records whether the kernel reports verity enabled on the file (`statx`). Reading the kernel's
//! own measurement (`FS_IOC_MEASURE_VERITY`) is not done yet: the value compared is this
//! userspace computation.
//!
//! The digest is computed here, in userspace, with the same algorithm as the kernel and the
//! `fsverity digest` tool (fsverity-utils), so that it can be recorded even where the filesystem
//! lacks verity support or verity is not (yet) enabled on the file.
//!
//! The algorithm (see the kernel's `Documentation/filesystems/fsverity.rst`), for SHA-256 and no
//! salt:
//!
//! * The file's data is split into blocks of the Merkle tree block size, the last one zero-padded;
//!   each block is hashed.
//! * The hashes of one level are concatenated and packed into blocks of the same size, the last
//!   block of the level zero-padded; each of those blocks is hashed to form the next level. This
//!   repeats until a level consists of a single block.
//! * The root hash is the hash of that single block. A file of at most one block thus has as root
//!   hash the hash of its (padded) data block; an empty file has an all-zero root hash.
//! * The digest is the hash of the 256-byte `struct fsverity_descriptor` (`version` = 1,
//!   `hash_algorithm` = 1 for SHA-256, `log_blocksize`, `salt_size` = 0, 4 reserved bytes,
//!   little-endian `data_size`, `root_hash` zero-padded to 64 bytes, 32 bytes of salt and 144
//!   reserved bytes, all zero).

use sha2::{Digest, Sha256};

/// Size of a SHA-256 hash in bytes.
const HASH_SIZE: usize = 32;

/// Smallest Merkle tree block size accepted.
const MIN_BLOCK_SIZE: usize = 1024;

/// Largest Merkle tree block size accepted.
const MAX_BLOCK_SIZE: usize = 65536;

/// Reads are issued in chunks of at least this many bytes (a whole number of blocks), so that
/// small block sizes do not mean one tiny `read` call per block.
const READ_CHUNK: usize = 64 * 1024;

/// `FS_VERITY_HASH_ALG_SHA256`.
const HASH_ALG_SHA256: u8 = 1;

/// Size of `struct fsverity_descriptor`.
const DESCRIPTOR_SIZE: usize = 256;

/// The fs-verity digest (SHA-256, no salt) of everything `reader` yields, with Merkle tree blocks
/// of `block_size` bytes (a power of two, 1024..=65536). Reads sequentially with one pass; memory
/// is O(tree levels * block_size).
pub(crate) fn fsverity_sha256(
    reader: impl std::io::Read,
    block_size: usize,
) -> std::io::Result<[u8; 32]> {
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "fs-verity block size must be a power of two in \
                 {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}, got {block_size}"
            ),
        ));
    }
    let log_blocksize = u8::try_from(block_size.trailing_zeros())
        .expect("log2 of a block size of at most 65536 fits in a u8");

    let (data_size, root_hash) = merkle_root(reader, block_size)?;

    let mut descriptor = [0u8; DESCRIPTOR_SIZE];
    descriptor[0] = 1; // version
    descriptor[1] = HASH_ALG_SHA256; // hash_algorithm
    descriptor[2] = log_blocksize; // log_blocksize
    descriptor[3] = 0; // salt_size
    // descriptor[4..8]: __reserved_0x04, zero.
    descriptor[8..16].copy_from_slice(&data_size.to_le_bytes()); // data_size
    descriptor[16..16 + HASH_SIZE].copy_from_slice(&root_hash); // root_hash[64], zero-padded
    // descriptor[80..112]: salt[32], zero; descriptor[112..256]: __reserved[144], zero.
    Ok(Sha256::digest(descriptor).into())
}

/// Reads `reader` to the end and returns the number of bytes read and the Merkle tree root hash.
fn merkle_root(
    mut reader: impl std::io::Read,
    block_size: usize,
) -> std::io::Result<(u64, [u8; HASH_SIZE])> {
    let mut tree = Tree::new(block_size);
    let mut chunk = vec![0u8; block_size.max(READ_CHUNK)];
    let mut data_size: u64 = 0;
    let mut data_blocks: u64 = 0;
    loop {
        let filled = fill(&mut reader, &mut chunk)?;
        data_size = data_size
            .checked_add(u64::try_from(filled).expect("a read buffer length fits in a u64"))
            .ok_or_else(|| std::io::Error::other("fs-verity input size overflows a u64"))?;
        for block in chunk[..filled].chunks(block_size) {
            tree.push(0, hash_padded(block, block_size));
            data_blocks += 1;
        }
        if filled < chunk.len() {
            break;
        }
    }
    Ok((data_size, tree.finish(data_blocks)))
}

/// Reads into `buf` until it is full or the reader is exhausted; returns the bytes read.
fn fill(reader: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// SHA-256 of `data` zero-padded to `block_size` bytes.
fn hash_padded(data: &[u8], block_size: usize) -> [u8; HASH_SIZE] {
    const ZEROS: [u8; 4096] = [0; 4096];
    let mut hasher = Sha256::new();
    hasher.update(data);
    let mut pad = block_size - data.len();
    while pad > 0 {
        let n = pad.min(ZEROS.len());
        hasher.update(&ZEROS[..n]);
        pad -= n;
    }
    hasher.finalize().into()
}

/// The hash levels of a Merkle tree under construction: one partially filled block per level
/// (level 0 holds the hashes of the data blocks), plus how many blocks each level has completed.
#[derive(Debug)]
struct Tree {
    block_size: usize,
    levels: Vec<Level>,
}

#[derive(Debug)]
struct Level {
    /// The hashes of this level that do not yet fill a block.
    pending: Vec<u8>,
    /// Number of blocks of this level hashed so far (and pushed into the next level).
    blocks: u64,
}

impl Tree {
    fn new(block_size: usize) -> Self {
        Self {
            block_size,
            levels: Vec::new(),
        }
    }

    /// Appends `hash` to level `level`; every block that fills up is hashed into the level above.
    fn push(&mut self, mut level: usize, mut hash: [u8; HASH_SIZE]) {
        loop {
            if level == self.levels.len() {
                self.levels.push(Level {
                    pending: Vec::with_capacity(self.block_size),
                    blocks: 0,
                });
            }
            let current = &mut self.levels[level];
            current.pending.extend_from_slice(&hash);
            // SHA-256 hashes (32 bytes) tile a power-of-two block of at least 1024 bytes exactly.
            if current.pending.len() < self.block_size {
                return;
            }
            hash = Sha256::digest(&current.pending).into();
            current.pending.clear();
            current.blocks += 1;
            level += 1;
        }
    }

    /// Completes the tree bottom-up, given the number of data blocks that were pushed into level
    /// 0, and returns the root hash.
    fn finish(mut self, data_blocks: u64) -> [u8; HASH_SIZE] {
        // Number of blocks in the level below `level`, i.e. number of hashes in `level`.
        let mut below = data_blocks;
        let mut level = 0;
        loop {
            match below {
                // Empty file: the root hash is all zeros.
                0 => return [0; HASH_SIZE],
                // The level below is a single block: its hash, the only one here, is the root.
                1 => {
                    let mut root = [0; HASH_SIZE];
                    root.copy_from_slice(&self.levels[level].pending[..HASH_SIZE]);
                    return root;
                }
                _ => {
                    let current = &mut self.levels[level];
                    if !current.pending.is_empty() {
                        let hash = hash_padded(&current.pending, self.block_size);
                        current.pending.clear();
                        current.blocks += 1;
                        self.push(level + 1, hash);
                    }
                    below = self.levels[level].blocks;
                    level += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fsverity_sha256;
    use crate::digest::hex::hex;
    use std::io;

    /// The deterministic test pattern: byte `i` is `(i * 31 + 7) % 251`.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from((i * 31 + 7) % 251).expect("a value below 251 fits in a u8"))
            .collect()
    }

    fn digest_hex(data: &[u8], block_size: usize) -> String {
        hex(&fsverity_sha256(data, block_size).expect("reading a slice cannot fail"))
    }

    // The expected digests below were produced with fsverity-utils 1.5 (Debian package
    // `fsverity`) on files holding `pattern(len)`, by
    //     fsverity digest --hash-alg=sha256 --block-size=<block size> FILE
    // e.g. `fsverity digest --hash-alg=sha256 --block-size=4096 empty`.

    #[test]
    fn empty() {
        // fsverity digest --hash-alg=sha256 --block-size=4096 (empty file)
        assert_eq!(
            digest_hex(&[], 4096),
            "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95"
        );
    }

    #[test]
    fn one_byte() {
        // fsverity digest --hash-alg=sha256 --block-size=4096 (pattern, 1 byte)
        assert_eq!(
            digest_hex(&pattern(1), 4096),
            "f30ad420d7e839002c5bfec7fe47367c7cd3759445359f0c9ac78bac40d9108f"
        );
        // fsverity digest --hash-alg=sha256 --block-size=1024 (pattern, 1 byte)
        assert_eq!(
            digest_hex(&pattern(1), 1024),
            "5133dfa7824b753a0e7bfe10115671f2766bb2a2f83d5647f7a1a2992a00d010"
        );
    }

    #[test]
    fn exactly_one_block() {
        // fsverity digest --hash-alg=sha256 --block-size=4096 (pattern, 4096 bytes)
        assert_eq!(
            digest_hex(&pattern(4096), 4096),
            "c08bc67f36b96127139d2f5746831996f90fb2cfb4e3a58d920cbd75ffeedaf6"
        );
        // fsverity digest --hash-alg=sha256 --block-size=1024 (pattern, 4096 bytes)
        assert_eq!(
            digest_hex(&pattern(4096), 1024),
            "a458e6c1d2c222d0eceb28e38ab9c77d0f36c77a78b171b6b4bb638dba113516"
        );
    }

    #[test]
    fn one_block_and_one_byte() {
        // fsverity digest --hash-alg=sha256 --block-size=4096 (pattern, 4097 bytes)
        assert_eq!(
            digest_hex(&pattern(4097), 4096),
            "a5250fbdd10ee3c2aeee355361e2c43971460e7cbe4cba426653c5597cdedbbf"
        );
    }

    #[test]
    fn full_hash_block_boundary() {
        // 128 data blocks of 4096 bytes: their hashes exactly fill one hash block, which is
        // then the top of the tree.
        // fsverity digest --hash-alg=sha256 --block-size=4096 (pattern, 524288 bytes)
        assert_eq!(
            digest_hex(&pattern(128 * 4096), 4096),
            "8a38141db113c14d06e0dd99960cea7c173c9bda9b7d2e45cac520428580455c"
        );
        // One byte more: a 129th data block, hence two hash blocks and a second level.
        // fsverity digest --hash-alg=sha256 --block-size=4096 (pattern, 524289 bytes)
        assert_eq!(
            digest_hex(&pattern(128 * 4096 + 1), 4096),
            "41a2ee76be9e29bd8f583ad3561deb2bf86b6d65fe72e14e8efa544c064d815f"
        );
    }

    #[test]
    fn one_mebibyte() {
        let data = pattern(1 << 20);
        // fsverity digest --hash-alg=sha256 --block-size=4096 (pattern, 1048576 bytes)
        assert_eq!(
            digest_hex(&data, 4096),
            "3a78bf384cc537ff54b36713c5f81c375a62342d89de92c34dd63eff0201bc3e"
        );
        // fsverity digest --hash-alg=sha256 --block-size=1024 (pattern, 1048576 bytes)
        assert_eq!(
            digest_hex(&data, 1024),
            "213741010b2e69ec134be991d7e26a47149ce520272ab72bcda480d7c1278274"
        );
        // fsverity digest --hash-alg=sha256 --block-size=65536 (pattern, 1048576 bytes)
        assert_eq!(
            digest_hex(&data, 65536),
            "7bb1b799b2d9f197598c612f8b0643c5db63f3b020eca7b4a880deeb4ba3599a"
        );
    }

    #[test]
    fn three_tree_levels() {
        // With 1024-byte blocks, 32 hashes fit in a block: 1025 data blocks -> 33 hash blocks
        // -> 2 hash blocks -> 1 root block, i.e. three levels of hash blocks.
        let data = pattern(1024 * 32 * 32 + 5);
        // fsverity digest --hash-alg=sha256 --block-size=1024 (pattern, 1048581 bytes)
        assert_eq!(
            digest_hex(&data, 1024),
            "5ecea930730be1c786104200c6ce39b56115a8479cf782bcee821ca3e0904f33"
        );
        // fsverity digest --hash-alg=sha256 --block-size=65536 (pattern, 1048581 bytes)
        assert_eq!(
            digest_hex(&data, 65536),
            "878a1fe6cf83f25564a6db260263827345926823cb33cf89021c9958ab9701ec"
        );
    }

    /// A reader that yields at most `step` bytes per call and is interrupted every other call.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
        interrupt: bool,
    }

    impl io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(io::Error::from(io::ErrorKind::Interrupted));
            }
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn short_and_interrupted_reads() {
        let data = pattern(1024 * 32 * 32 + 5);
        let reader = Trickle {
            data: &data,
            step: 1000,
            interrupt: false,
        };
        let digest = fsverity_sha256(reader, 1024).expect("the reader only fails with EINTR");
        assert_eq!(hex(&digest), digest_hex(&data, 1024));
    }

    #[test]
    fn read_errors_are_returned() {
        struct Failing;
        impl io::Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("boom"))
            }
        }
        let err = fsverity_sha256(Failing, 4096).expect_err("the reader fails");
        assert_eq!(err.to_string(), "boom");
    }

    #[test]
    fn invalid_block_sizes_are_refused() {
        for block_size in [0, 1, 512, 1000, 3000, 4095, 4097, 131_072, usize::MAX] {
            let err = fsverity_sha256(&[][..], block_size)
                .expect_err("an invalid block size must be refused");
            assert_eq!(
                err.kind(),
                io::ErrorKind::InvalidInput,
                "block size {block_size}"
            );
        }
        for block_size in [1024, 2048, 4096, 8192, 16384, 32768, 65536] {
            assert!(
                fsverity_sha256(&[][..], block_size).is_ok(),
                "block size {block_size}"
            );
        }
    }
}
