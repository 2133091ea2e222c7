//! A deadline heap: entries ordered by wall-clock Unix milliseconds, popped when due. The
//! scheduler sleeps until the earliest deadline (`sleep_until` in its select loop) and is woken
//! early by any other event, so there is no periodic scan over all jobs. O(log n) per entry.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

pub struct TimerHeap<T> {
    heap: BinaryHeap<Reverse<(i64, u64)>>,
    entries: HashMap<u64, T>,
    seq: u64,
}

impl<T> Default for TimerHeap<T> {
    fn default() -> Self {
        TimerHeap {
            heap: BinaryHeap::new(),
            entries: HashMap::new(),
            seq: 0,
        }
    }
}

impl<T> TimerHeap<T> {
    /// Schedules `item` at `at_ms`. Entries due at the same time pop in insertion order.
    pub fn push(&mut self, at_ms: i64, item: T) {
        self.seq += 1;
        self.heap.push(Reverse((at_ms, self.seq)));
        self.entries.insert(self.seq, item);
    }

    /// The earliest deadline.
    pub fn next_at(&self) -> Option<i64> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns the earliest entry if it is due at `now_ms`.
    pub fn pop_due(&mut self, now_ms: i64) -> Option<(i64, T)> {
        let Reverse((at, seq)) = *self.heap.peek()?;
        if at > now_ms {
            return None;
        }
        self.heap.pop();
        self.entries.remove(&seq).map(|t| (at, t))
    }

    /// Keeps only the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.entries.retain(|_, t| keep(t));
        let entries = &self.entries;
        self.heap.retain(|Reverse((_, seq))| entries.contains_key(seq));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.entries.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_then_insertion_order() {
        let mut t = TimerHeap::default();
        t.push(30, "c");
        t.push(10, "a");
        t.push(10, "b");
        assert_eq!(t.next_at(), Some(10));
        assert_eq!(t.pop_due(5), None);
        assert_eq!(t.pop_due(10), Some((10, "a")));
        assert_eq!(t.pop_due(10), Some((10, "b")));
        assert_eq!(t.pop_due(29), None);
        t.retain(|x| *x != "c");
        assert!(t.is_empty());
        assert_eq!(t.next_at(), None);
    }
}
