//! Source checkpoints held back until every item read before them is settled (marked sent,
//! recorded as skipped, or dead-lettered), then released in order to be saved as cursors. An item
//! that fails stays unsettled, so the cursor never moves past it in this invocation.
//!
//! Items are counted per chunk (the reader hands them over in chunks, and flushes its chunk
//! before a checkpoint), so the bookkeeping is a counter per chunk, not a set of items.

use std::collections::VecDeque;

use crate::source::Checkpoint;

#[derive(Default)]
pub(super) struct Checkpoints {
    /// The number of the oldest chunk still counted; older ones are all settled.
    base: u64,
    /// Unsettled items per chunk, from `base` on.
    unsettled: VecDeque<u64>,
    /// Checkpoints not yet released, with the number of chunks read before each.
    waiting: VecDeque<(u64, Checkpoint)>,
}

impl Checkpoints {
    /// A chunk of items arrives; its number tags its items.
    pub(super) fn chunk_started(&mut self) -> u64 {
        self.unsettled.push_back(0);
        self.base + self.unsettled.len() as u64 - 1
    }

    /// One item of `chunk` is on its way (planned, not yet settled).
    pub(super) fn add(&mut self, chunk: u64) {
        if let Some(count) = self.slot(chunk) {
            *count += 1;
        }
    }

    /// One item of `chunk` is settled.
    pub(super) fn settle(&mut self, chunk: u64) {
        if let Some(count) = self.slot(chunk) {
            *count = count.saturating_sub(1);
        }
    }

    /// A source's checkpoint, after every chunk read so far.
    pub(super) fn checkpoint(&mut self, checkpoint: Checkpoint) {
        self.waiting.push_back((self.base + self.unsettled.len() as u64, checkpoint));
    }

    /// The checkpoints whose items before them are all settled, oldest first.
    pub(super) fn ready(&mut self) -> Vec<Checkpoint> {
        while self.unsettled.front() == Some(&0) {
            self.unsettled.pop_front();
            self.base += 1;
        }
        let mut ready = Vec::new();
        while self.waiting.front().is_some_and(|(chunks_before, _)| *chunks_before <= self.base) {
            ready.extend(self.waiting.pop_front().map(|(_, checkpoint)| checkpoint));
        }
        ready
    }

    fn slot(&mut self, chunk: u64) -> Option<&mut u64> {
        let index = usize::try_from(chunk.checked_sub(self.base)?).ok()?;
        self.unsettled.get_mut(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(cursor: &str) -> Checkpoint {
        Checkpoint { scope: "octo/repo".into(), cursor: cursor.into() }
    }

    fn cursors(ready: Vec<Checkpoint>) -> Vec<String> {
        ready.into_iter().map(|checkpoint| checkpoint.cursor).collect()
    }

    #[test]
    fn a_checkpoint_waits_for_every_item_before_it_in_any_order() {
        let mut checkpoints = Checkpoints::default();
        checkpoints.checkpoint(at("start"));
        assert_eq!(cursors(checkpoints.ready()), ["start"], "nothing before it");
        let first = checkpoints.chunk_started();
        checkpoints.add(first);
        checkpoints.add(first);
        let second = checkpoints.chunk_started();
        checkpoints.add(second);
        checkpoints.checkpoint(at("after two chunks"));
        let third = checkpoints.chunk_started();
        checkpoints.add(third);
        checkpoints.checkpoint(at("after three chunks"));
        assert!(checkpoints.ready().is_empty());
        // Settled out of order: the second and third chunks first.
        checkpoints.settle(second);
        checkpoints.settle(third);
        checkpoints.settle(first);
        assert!(checkpoints.ready().is_empty(), "one item of the first chunk is still out");
        checkpoints.settle(first);
        assert_eq!(cursors(checkpoints.ready()), ["after two chunks", "after three chunks"]);
    }

    #[test]
    fn an_item_that_never_settles_holds_every_later_checkpoint() {
        let mut checkpoints = Checkpoints::default();
        let chunk = checkpoints.chunk_started();
        checkpoints.add(chunk);
        checkpoints.checkpoint(at("1"));
        let empty = checkpoints.chunk_started();
        let _ = empty;
        checkpoints.checkpoint(at("2"));
        assert!(checkpoints.ready().is_empty());
        assert!(checkpoints.ready().is_empty(), "asking again releases nothing");
    }
}
