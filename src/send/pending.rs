//! The keys of the items in the buffer or in flight: an item read twice is sent once.

use foldhash::HashSet as FastSet;

/// The keys of the items in the buffer or in flight, kept as 128-bit hashes: no allocation per
/// item on the pipeline thread, and two different keys taken for one would need a 128-bit
/// collision (about 10^-27 for a million keys), never a real run.
#[derive(Default)]
pub(super) struct PendingKeys(FastSet<u128>);

impl PendingKeys {
    fn hash(key: &str) -> u128 {
        use std::hash::BuildHasher;
        let [low, high] = [0x5157_4d45_5452_4943_u64, 0x7065_6e64_696e_6721]
            .map(|seed| foldhash::quality::FixedState::with_seed(seed).hash_one(key));
        (u128::from(high) << 64) | u128::from(low)
    }

    pub(super) fn contains(&self, key: &str) -> bool {
        self.0.contains(&Self::hash(key))
    }

    pub(super) fn insert(&mut self, key: &str) {
        self.0.insert(Self::hash(key));
    }

    pub(super) fn remove(&mut self, key: &str) {
        self.0.remove(&Self::hash(key));
    }
}
