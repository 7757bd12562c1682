//! Point keys: the identity of a point (prefix, tags, timestamp) as a stable 64-bit hash that
//! the ledger stores, and the tag sets that share its first part.

use std::sync::Arc;

/// A tag set in a hash map, by the hash it carries; equal by content (identity first).
pub(super) struct TagSetKey<'r> {
    pub(super) hash: u64,
    pub(super) tags: &'r Arc<[String]>,
}

impl std::hash::Hash for TagSetKey<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialEq for TagSetKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && (Arc::ptr_eq(self.tags, other.tags) || self.tags == other.tags)
    }
}

impl Eq for TagSetKey<'_> {}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// The FNV-1a state after the prefix and the tags of a point key: the part runs of one tag set
/// share, computed once per tag set.
#[derive(Clone, Copy, Debug)]
pub(super) struct TagSetHash(pub(super) u64);

impl TagSetHash {
    pub(super) fn new(prefix: &str, tags: &[String]) -> TagSetHash {
        let mut hash = TagSetHash(FNV_OFFSET);
        hash.feed(prefix.as_bytes());
        for tag in tags {
            hash.feed(tag.as_bytes());
        }
        hash
    }

    fn feed(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
        // A separator that cannot occur in UTF-8 text keeps ("ab","c") apart from ("a","bc").
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(FNV_PRIME);
    }

    /// The point key at `timestamp`.
    pub(super) fn at(mut self, timestamp: i64) -> i64 {
        self.feed(&timestamp.to_le_bytes());
        i64::from_ne_bytes(self.0.to_ne_bytes())
    }
}

/// A stable 64-bit FNV-1a hash of the prefix, tags and timestamp. Stored in the ledger, so it must
/// never change between versions (std's hasher may).
pub fn point_key(prefix: &str, tags: &[String], timestamp: i64) -> i64 {
    TagSetHash::new(prefix, tags).at(timestamp)
}
