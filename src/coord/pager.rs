//! Reading a large prefix in pages without etcd counting to its end on every page.
//!
//! etcd (3.4, 3.5) answers a range read with a `limit` by walking its index over the *whole*
//! range to fill in the response's `count`: reading N keys in pages of P from a moving start key
//! visits N²/2P index entries (a million jobs in pages of 1,000: 5·10⁸, minutes of etcd's CPU
//! per list; ten workers listing at once never finished). Instead the pager splits the prefix by
//! its next byte, counts every part in one transaction (`count_only`: one index walk of the
//! part), and reads runs of adjacent parts holding at most `PAGE` keys each as a plain range,
//! with no limit. A part with more is split again by its next byte. Every key is visited once
//! per level of the split (about 10 for a million names), not once per page.
//!
//! All counts and reads are at the revision of the first count: one consistent snapshot.

use super::{Coord, CoordError, prefix_end};
use etcd_client::{GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};

/// Keys of one page at most.
pub(crate) const PAGE: i64 = 1000;
/// Count operations per transaction (etcd's default `--max-txn-ops` is 128).
const COUNTS_PER_TXN: usize = 128;

/// What is left of a prefix read, in key order (the next is last).
enum Todo {
    /// `[start, end)` holds at most `PAGE` keys (`count` of them): read it whole.
    Read { start: Vec<u8>, end: Vec<u8>, count: i64 },
    /// Every key that starts with this: count its parts first.
    Split(Vec<u8>),
}

/// A prefix read in progress: see `Coord::next_page`.
pub(crate) struct Pager {
    todo: Vec<Todo>,
    revision: i64,
}

impl Pager {
    /// A read of every key under `full_prefix` (absolute) at `revision` (0: the current one).
    pub(crate) fn new(full_prefix: &[u8], revision: i64) -> Pager {
        Pager {
            todo: vec![Todo::Split(full_prefix.to_vec())],
            revision,
        }
    }

    /// The revision the pages are read at (0 until the first page).
    pub(crate) fn revision(&self) -> i64 {
        self.revision
    }
}

impl Coord {
    /// The next page of `pager`, in key order: `None` once every key was read. An empty page
    /// comes only for an empty prefix.
    pub(crate) async fn next_page(&self, pager: &mut Pager) -> Result<Option<Vec<KeyValue>>, CoordError> {
        loop {
            match pager.todo.pop() {
                None => return Ok(None),
                // only an empty prefix plans a read of nothing: one empty page
                Some(Todo::Read { count: 0, .. }) => return Ok(Some(Vec::new())),
                Some(Todo::Read { start, end, .. }) => {
                    let opts = GetOptions::new().with_range(end).with_revision(pager.revision);
                    let mut resp = self
                        .call("get", |mut c| async move { c.get(start, Some(opts)).await })
                        .await?;
                    return Ok(Some(resp.take_kvs()));
                }
                Some(Todo::Split(prefix)) => {
                    let parts = split(&prefix);
                    let counts = self.count_parts(&parts, &mut pager.revision).await?;
                    pager.todo.extend(plan(parts, counts).into_iter().rev());
                }
            }
        }
    }

    /// How many keys each `[start, end)` holds, at `*revision` (0: now, and then the revision
    /// read is kept there).
    async fn count_parts(&self, parts: &[(Vec<u8>, Vec<u8>)], revision: &mut i64) -> Result<Vec<i64>, CoordError> {
        let mut counts = Vec::with_capacity(parts.len());
        for chunk in parts.chunks(COUNTS_PER_TXN) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(start, end)| {
                    let mut opts = GetOptions::new().with_range(end.clone()).with_count_only();
                    if *revision > 0 {
                        opts = opts.with_revision(*revision);
                    }
                    TxnOp::get(start.clone(), Some(opts))
                })
                .collect();
            let txn = Txn::new().and_then(ops);
            let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
            if *revision == 0 {
                *revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            for op in resp.op_responses() {
                counts.push(match op {
                    TxnOpResponse::Get(g) => g.count(),
                    _ => 0,
                });
            }
        }
        Ok(counts)
    }
}

/// The parts of the keys that start with `prefix`, in key order: the key `prefix` itself, then
/// for each next byte b the keys that start with `prefix`+b. Together exactly the prefix's range.
fn split(prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let with = |b: u8| {
        let mut k = prefix.to_vec();
        k.push(b);
        k
    };
    let mut parts = Vec::with_capacity(257);
    parts.push((prefix.to_vec(), with(0)));
    for b in 0..=255u8 {
        let start = with(b);
        let end = prefix_end(&start);
        parts.push((start, end));
    }
    parts
}

/// Runs of adjacent parts with at most `PAGE` keys together are one read; a part with more is
/// split again. In key order.
fn plan(parts: Vec<(Vec<u8>, Vec<u8>)>, counts: Vec<i64>) -> Vec<Todo> {
    let mut out = Vec::new();
    let mut run: Option<(Vec<u8>, Vec<u8>, i64)> = None;
    for ((start, end), n) in parts.into_iter().zip(counts) {
        if n == 0 {
            continue;
        }
        if n > PAGE {
            if let Some((s, e, c)) = run.take() {
                out.push(Todo::Read {
                    start: s,
                    end: e,
                    count: c,
                });
            }
            // a part that is not a single key is the keys with one prefix (its start)
            out.push(Todo::Split(start));
            continue;
        }
        run = match run.take() {
            Some((s, _, c)) if c + n <= PAGE => Some((s, end, c + n)),
            Some((s, e, c)) => {
                out.push(Todo::Read {
                    start: s,
                    end: e,
                    count: c,
                });
                Some((start, end, n))
            }
            None => Some((start, end, n)),
        };
    }
    if let Some((s, e, c)) = run {
        out.push(Todo::Read {
            start: s,
            end: e,
            count: c,
        });
    }
    if out.is_empty() {
        // an empty prefix: one empty page, so a list still ends
        out.push(Todo::Read {
            start: Vec::new(),
            end: Vec::new(),
            count: 0,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_of_a_prefix_cover_its_range_exactly_in_order() {
        let parts = split(b"x/");
        assert_eq!(parts.len(), 257);
        assert_eq!(parts[0], (b"x/".to_vec(), b"x/\0".to_vec()));
        for w in parts.windows(2) {
            assert_eq!(w[0].1, w[1].0, "contiguous");
        }
        assert_eq!(parts.last().unwrap().1, prefix_end(b"x/"), "up to the prefix's end");
    }

    #[test]
    fn small_parts_are_read_together_and_large_ones_split_again() {
        let parts: Vec<(Vec<u8>, Vec<u8>)> = (0..5u8).map(|b| (vec![b], vec![b + 1])).collect();
        let plan = plan(parts, vec![400, 0, 500, 2000, 300]);
        let shape: Vec<String> = plan
            .iter()
            .map(|t| match t {
                Todo::Read { start, end, count } => format!("read {start:?}..{end:?} ({count})"),
                Todo::Split(p) => format!("split {p:?}"),
            })
            .collect();
        assert_eq!(shape, ["read [0]..[3] (900)", "split [3]", "read [4]..[5] (300)"]);
    }
}
