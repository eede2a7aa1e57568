//! Which of a Service's route candidates a request's path can satisfy, found without
//! trying them all: built once when the routes arrive, it files each candidate under
//! its path match (an exact path, a prefix, or neither: a regular expression), so a
//! request looks up its own path and each of its prefixes and tries only what is filed
//! there, plus the regular expressions.
//!
//! It only narrows: a candidate it offers is still checked whole (host, path, method,
//! headers, query), and every candidate whose path can match is offered, so selection
//! picks exactly what a scan of every candidate would.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Paths by a hash cheaper than the standard one (which costs more than the rest of a
/// selection): the keys are the routes' own paths, so a request can only look them up,
/// not choose what collides.
type PathMap = HashMap<Box<str>, Vec<usize>, BuildHasherDefault<PathHasher>>;

/// How a candidate's path is matched, for filing it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PathKey<'a> {
    /// Only this path.
    Exact(&'a str),
    /// Element-wise prefix, as [`super::select::prefix_matches`] compares it (`""`:
    /// every path; a match without a path is filed here).
    Prefix(&'a str),
    /// Anything else (a regular expression): tried for every request.
    Other,
}

/// Candidate positions (in the most-specific-first order) by path match; each list is
/// in ascending order, so the first candidate of a list a request satisfies is the
/// best of that list.
#[derive(Debug, Default)]
pub(crate) struct PathIndex {
    exact: PathMap,
    prefix: PathMap,
    /// Bit `n`: some prefix is `n` bytes long (lengths from 63 on share bit 63), so a
    /// request's prefix of a length no route has is not looked up.
    prefix_lens: u64,
    other: Vec<usize>,
}

impl PathIndex {
    /// Files `keys`, the candidates' path matches in candidate order.
    pub(crate) fn new<'a>(keys: impl IntoIterator<Item = PathKey<'a>>) -> PathIndex {
        let mut index = PathIndex::default();
        for (position, key) in keys.into_iter().enumerate() {
            match key {
                PathKey::Exact(p) => index.exact.entry(p.into()).or_default().push(position),
                PathKey::Prefix(p) => {
                    index.prefix_lens |= len_bit(p.len());
                    index.prefix.entry(p.into()).or_default().push(position);
                }
                PathKey::Other => index.other.push(position),
            }
        }
        index
    }

    /// Calls `f` with each list of candidates `path` may satisfy: its exact path, the
    /// others (regular expressions), then its prefixes longest first (`/a/b` is
    /// `/a/b`, `/a` and `""`). `f` returns `false` to stop.
    pub(crate) fn lists(&self, path: &str, mut f: impl FnMut(&[usize]) -> bool) {
        if !self.exact.is_empty() {
            if let Some(list) = self.exact.get(path) {
                if !f(list) {
                    return;
                }
            }
        }
        if !self.other.is_empty() && !f(&self.other) {
            return;
        }
        if self.prefix.is_empty() {
            return;
        }
        // Prefixes of `path` that end where a segment does: at its end, or before a
        // `/` (byte offsets of an ASCII byte, so always a char boundary).
        let bytes = path.as_bytes();
        let mut end = bytes.len();
        loop {
            if self.prefix_lens & len_bit(end) != 0 {
                if let Some(list) = self.prefix.get(&path[..end]) {
                    if !f(list) {
                        return;
                    }
                }
            }
            if end == 0 {
                return;
            }
            end = bytes[..end].iter().rposition(|&b| b == b'/').unwrap_or(0);
        }
    }
}

fn len_bit(len: usize) -> u64 {
    1 << len.min(63)
}

/// A multiply-rotate hash over 8 bytes at a time (as rustc's FxHasher), with the high
/// bits folded into the low ones at the end (the map picks buckets by the low bits,
/// which the multiplications alone leave depending on the low bytes only).
#[derive(Default)]
pub(crate) struct PathHasher(u64);

impl PathHasher {
    const K: u64 = 0xf135_7aea_2e62_a9c5;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(26) ^ word).wrapping_mul(Self::K);
    }
}

impl Hasher for PathHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        let mut word = [0; 8];
        word[..rest.len()].copy_from_slice(rest);
        // The length tells `ab` from `ab\0`.
        self.add(u64::from_le_bytes(word) ^ ((bytes.len() as u64) << 56));
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        let h = self.0;
        (h ^ (h >> 32)).wrapping_mul(Self::K) ^ (h >> 29)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists(index: &PathIndex, path: &str) -> Vec<Vec<usize>> {
        let mut all = Vec::new();
        index.lists(path, |l| {
            all.push(l.to_vec());
            true
        });
        all
    }

    #[test]
    fn a_path_finds_its_exact_match_the_others_and_its_prefixes_longest_first() {
        let index = PathIndex::new([
            PathKey::Exact("/a/b"),
            PathKey::Prefix("/a"),
            PathKey::Other,
            PathKey::Prefix(""),
            PathKey::Prefix("/a/b"),
            PathKey::Prefix("/ab"),
            PathKey::Prefix("/a"),
        ]);
        assert_eq!(
            lists(&index, "/a/b"),
            [vec![0], vec![2], vec![4], vec![1, 6], vec![3]]
        );
        // Element-wise: /ab is not under /a, and /a/bc is not under /a/b.
        assert_eq!(lists(&index, "/ab"), [vec![2], vec![5], vec![3]]);
        assert_eq!(lists(&index, "/a/bc"), [vec![2], vec![1, 6], vec![3]]);
        // A trailing slash: /a/b/ is under /a/b.
        assert_eq!(
            lists(&index, "/a/b/"),
            [vec![2], vec![4], vec![1, 6], vec![3]]
        );
        assert_eq!(lists(&index, ""), [vec![2], vec![3]]);
    }

    #[test]
    fn the_path_hash_tells_apart_what_differs_in_one_byte_or_in_length() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<PathHasher>::default();
        let paths = [
            "",
            "/",
            "/a",
            "/a\0",
            "/team-1/books",
            "/team-2/books",
            "/team-1/books/x",
        ];
        let hashes: std::collections::HashSet<u64> =
            paths.iter().map(|p| build.hash_one(p)).collect();
        assert_eq!(hashes.len(), paths.len());
        // The low bits (the bucket) differ too, for keys differing in a high byte.
        let low = |p: &str| build.hash_one(p) & 0xff;
        let buckets: std::collections::HashSet<u64> =
            (0..100).map(|i| low(&format!("/team-{i}/books"))).collect();
        assert!(buckets.len() > 40, "{} buckets of 256", buckets.len());
    }

    #[test]
    fn stopping_stops() {
        let index = PathIndex::new([PathKey::Prefix("/a"), PathKey::Prefix("")]);
        let mut seen = 0;
        index.lists("/a/x", |_| {
            seen += 1;
            false
        });
        assert_eq!(seen, 1);
    }

    #[test]
    fn prefixes_longer_than_the_length_bits_are_found() {
        let long = format!("/{}", "x".repeat(100));
        let index = PathIndex::new([PathKey::Prefix(&long)]);
        assert_eq!(lists(&index, &format!("{long}/y")), [vec![0]]);
        assert!(lists(&index, &format!("/{}/y", "x".repeat(99))).is_empty());
    }
}
