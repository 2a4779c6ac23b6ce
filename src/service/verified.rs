//! Bearer strings already verified, so that a token's next call skips the
//! SHA-256 of its secret: about 8,000 instructions, the largest single
//! cost of a check (callgrind), for a secret that is the same on every
//! call of a gateway.
//!
//! It remains a secret check. A bearer is known here by a keyed hash
//! (SipHash-1-3, std's keyed hash, under a 128-bit key drawn at start and
//! never stored; about 250 instructions a call fewer than SipHash-2-4, and
//! no attack on either is known that would find a bearer matching a tag
//! it cannot see), mapped to the SHA-256 it was verified with; a
//! hit stands in for computing that SHA-256, and nothing else:
//! `authenticate` still looks the token up in the view by the bearer's id,
//! compares the digest with the stored one in constant time and refuses a
//! revoked token, on every call. So a revocation is refused from the next
//! call, and a forged bearer would need the id of a token whose verified
//! bearer's 64-bit keyed hash it matches, without the key: a chance of
//! 2^-64 a try, each try a refused call (at 100,000 calls a second, some
//! 5 million years on average). Nothing here holds a secret: the keyed
//! hash and the digest reveal nothing of it, and nothing is written to disk.

use std::{
    collections::HashMap,
    hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState},
};

use parking_lot::RwLock;

/// Entries kept at most; only bearers that passed the full check are
/// added (one per live token in practice), and the map is emptied when it
/// reaches this, so it cannot grow without bound.
const MAX_ENTRIES: usize = 4096;

/// The verified bearers: keyed hash → the SHA-256 of the bearer.
pub struct VerifiedSecrets {
    /// std's randomly keyed SipHash-1-3: keys drawn from the operating
    /// system once per process, and never exposed.
    key: RandomState,
    digests: RwLock<HashMap<u64, [u8; 32], BuildHasherDefault<TagHasher>>>,
}

impl Default for VerifiedSecrets {
    fn default() -> Self {
        VerifiedSecrets {
            key: RandomState::new(),
            digests: RwLock::default(),
        }
    }
}

impl VerifiedSecrets {
    /// The bearer's keyed hash.
    pub fn tag(&self, bearer: &[u8]) -> u64 {
        self.key.hash_one(bearer)
    }

    /// The SHA-256 a bearer with this tag was verified with, if any.
    pub fn digest(&self, tag: u64) -> Option<[u8; 32]> {
        self.digests.read().get(&tag).copied()
    }

    /// Remembers a bearer that has just passed the full check.
    pub fn insert(&self, tag: u64, digest: [u8; 32]) {
        let mut digests = self.digests.write();
        if digests.len() >= MAX_ENTRIES {
            digests.clear();
        }
        digests.insert(tag, digest);
    }
}

/// The map's hasher: its keys are keyed hashes already, so their low bits
/// are as good as any hash of them.
#[derive(Default)]
struct TagHasher(u64);

impl Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is called for these keys; this is for
        // completeness.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, tag: u64) {
        self.0 = tag;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_is_the_bearer_s_and_keys_differ_between_instances() {
        let a = VerifiedSecrets::default();
        let b = VerifiedSecrets::default();
        assert_eq!(a.tag(b"tok_1.secret"), a.tag(b"tok_1.secret"));
        assert_ne!(a.tag(b"tok_1.secret"), a.tag(b"tok_1.secreu"));
        assert_ne!(a.tag(b"tok_1.secret"), b.tag(b"tok_1.secret"));
    }

    #[test]
    fn only_what_was_inserted_is_found_and_the_map_stays_bounded() {
        let v = VerifiedSecrets::default();
        let tag = v.tag(b"tok_1.secret");
        assert_eq!(v.digest(tag), None);
        v.insert(tag, [7; 32]);
        assert_eq!(v.digest(tag), Some([7; 32]));
        for i in 0..(MAX_ENTRIES as u64 + 10) {
            v.insert(i, [0; 32]);
        }
        assert!(v.digests.read().len() <= MAX_ENTRIES);
    }
}
