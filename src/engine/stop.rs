//! Stop strings matched across token boundaries. Text that could still become a stop string is held back;
//! a matched stop string and everything after it is never sent to the client.
//!
//! Each stop string is a Knuth–Morris–Pratt automaton over bytes: its failure table is built once per
//! request ([`StopStrings::new`], on the HTTP side, in time linear in the stops' length) and each generated
//! byte advances every automaton in amortised constant time. So a token costs time in proportion to its
//! own bytes times the number of stop strings (at most a few dozen), never to the stops' total length:
//! what the engine thread spends per token does not grow with what a client sends. The current state of
//! each automaton is the length of the longest suffix of the text that is a prefix of that stop string —
//! exactly what must be held back. (The `aho-corasick` crate does not expose its states' depths, which
//! the hold-back needs; with a capped number of stop strings one automaton per stop is as fast.)
//!
//! Generation stops at the first byte where some stop string is complete; the text before that stop
//! string's start is released.

use std::sync::Arc;

/// One compiled stop string.
struct Pattern {
    bytes: Box<[u8]>,
    /// `fail[i]`: length of the longest proper border of `bytes[..=i]`.
    fail: Box<[u32]>,
}

impl Pattern {
    fn new(s: &str) -> Self {
        let bytes: Box<[u8]> = s.as_bytes().into();
        let mut fail = vec![0u32; bytes.len()];
        let mut k = 0usize;
        for i in 1..bytes.len() {
            while k > 0 && bytes[i] != bytes[k] {
                k = fail[k - 1] as usize;
            }
            if bytes[i] == bytes[k] {
                k += 1;
            }
            fail[i] = k as u32;
        }
        Self {
            bytes,
            fail: fail.into(),
        }
    }

    /// The state after `state` matched bytes are followed by `b`.
    #[inline]
    fn step(&self, mut state: usize, b: u8) -> usize {
        if state == self.bytes.len() {
            state = self.fail[state - 1] as usize;
        }
        while state > 0 && self.bytes[state] != b {
            state = self.fail[state - 1] as usize;
        }
        if self.bytes[state] == b {
            state + 1
        } else {
            0
        }
    }
}

/// A request's stop strings, compiled. Request content: never printed.
#[derive(Default)]
pub struct StopStrings {
    patterns: Vec<Pattern>,
}

impl StopStrings {
    /// Compiles the non-empty strings of `stops`; linear in their total length.
    pub fn new<S: AsRef<str>>(stops: &[S]) -> Self {
        Self {
            patterns: stops
                .iter()
                .map(AsRef::as_ref)
                .filter(|s| !s.is_empty())
                .map(Pattern::new)
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn len(&self) -> usize {
        self.patterns.len()
    }
}

impl std::fmt::Debug for StopStrings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StopStrings({} strings)", self.patterns.len())
    }
}

/// Streams one choice's text through its stop strings, cutting at the first complete stop string.
#[derive(Debug, Clone, Default)]
pub(crate) struct StopMatcher {
    stops: Arc<StopStrings>,
    /// Per stop string: bytes of it matched by the end of the text so far.
    states: Vec<usize>,
    /// Text not yet released is `pending[start..]`: never longer than the longest stop string. Released
    /// text is dropped from the front only once it is half the buffer, so a token costs time in
    /// proportion to its own length, not to the held-back text (amortised).
    pending: String,
    start: usize,
}

/// What to emit after pushing a delta.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StopOutcome {
    /// Text safe to send now; generation continues.
    Continue(String),
    /// Text before the stop string; generation must end.
    Stopped(String),
}

impl StopMatcher {
    pub(crate) fn new(stops: Arc<StopStrings>) -> Self {
        Self {
            states: vec![0; stops.patterns.len()],
            stops,
            pending: String::new(),
            start: 0,
        }
    }

    pub(crate) fn push(&mut self, delta: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue(delta.to_owned());
        }
        let base = self.pending.len();
        self.pending.push_str(delta);
        for (i, &b) in delta.as_bytes().iter().enumerate() {
            // The longest stop string ending at this byte starts earliest.
            let mut longest = 0;
            for (p, state) in self.stops.patterns.iter().zip(self.states.iter_mut()) {
                *state = p.step(*state, b);
                if *state == p.bytes.len() {
                    longest = longest.max(*state);
                }
            }
            if longest > 0 {
                // It starts on a character boundary (UTF-8 matched in UTF-8), at or after `start`
                // (held-back text is at least as long as any partial match).
                let stop_at = (base + i + 1 - longest).max(self.start);
                let out = self.pending[self.start..stop_at].to_owned();
                self.pending.clear();
                self.start = 0;
                self.states.iter_mut().for_each(|s| *s = 0);
                return StopOutcome::Stopped(out);
            }
        }
        // Hold back the longest suffix that is a prefix of some stop string (it starts where that stop
        // string's first byte, a character's first byte, matched).
        let hold = self.states.iter().copied().max().unwrap_or(0);
        let keep_from = (self.pending.len() - hold).max(self.start);
        let out = self.pending[self.start..keep_from].to_owned();
        self.start = keep_from;
        if self.start > self.pending.len() / 2 {
            self.pending.drain(..self.start);
            self.start = 0;
        }
        StopOutcome::Continue(out)
    }

    /// Text held back when generation ends for another reason.
    pub(crate) fn flush(&mut self) -> String {
        self.states.iter_mut().for_each(|s| *s = 0);
        let out = self.pending[self.start..].to_owned();
        self.pending.clear();
        self.start = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(Arc::new(StopStrings::new(stops)))
    }

    #[test]
    fn stop_across_deltas_is_never_emitted() {
        let mut m = matcher(&["END"]);
        assert_eq!(m.push("abc E"), StopOutcome::Continue("abc ".into()));
        assert_eq!(m.push("N"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("Dxyz"), StopOutcome::Stopped(String::new()));
    }

    #[test]
    fn false_prefix_is_released() {
        let mut m = matcher(&["END"]);
        assert_eq!(m.push("EN"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("o"), StopOutcome::Continue("ENo".into()));
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn first_completed_stop_wins_and_multibyte_is_safe() {
        let mut m = matcher(&["é!", "b"]);
        assert_eq!(m.push("aé"), StopOutcome::Continue("a".into()));
        assert_eq!(m.push("xb"), StopOutcome::Stopped("éx".into()));
    }

    #[test]
    fn borders_and_overlaps_are_found() {
        // "aab" after "aaab": the automaton falls back along the border instead of restarting.
        let mut m = matcher(&["aab"]);
        assert_eq!(m.push("a"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("a"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("a"), StopOutcome::Continue("a".into()));
        assert_eq!(m.push("bc"), StopOutcome::Stopped(String::new()));
        let mut m = matcher(&["abab", "xyz"]);
        assert_eq!(m.push("xabababa"), StopOutcome::Stopped("x".into()));
        let mut m = matcher(&["abac", "xyz"]);
        assert_eq!(m.push("ababa"), StopOutcome::Continue("ab".into()));
        assert_eq!(m.push("c"), StopOutcome::Stopped(String::new()));
    }

    #[test]
    fn hold_back_is_the_longest_prefix_of_any_stop() {
        let mut m = matcher(&["xyz", "yq"]);
        assert_eq!(m.push("axy"), StopOutcome::Continue("a".into()));
        // "a" went out before; "x" precedes the stop "yq".
        assert_eq!(m.push("q"), StopOutcome::Stopped("x".into()));
    }

    /// Against a plain reference: the text released before stopping equals the text up to the earliest
    /// end of a stop string, cut at that stop string's start, for random texts cut into random deltas.
    #[test]
    fn equals_a_plain_search_on_random_streams() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            let alphabet = ['a', 'b', 'é'];
            let word = |rng: &mut rand::rngs::StdRng, n: usize| -> String {
                (0..n).map(|_| alphabet[rng.random_range(0..3)]).collect()
            };
            let stops: Vec<String> = (0..rng.random_range(1..4))
                .map(|_| {
                    let n = rng.random_range(1..5);
                    word(&mut rng, n)
                })
                .collect();
            let len = rng.random_range(0..30);
            let text = word(&mut rng, len);
            // Reference: earliest end position over all stops, ties broken by the earlier start.
            let best = stops
                .iter()
                .filter_map(|s| text.find(s.as_str()).map(|p| (p + s.len(), p)))
                .min();
            let expected = match best {
                Some((_, start)) => (text[..start].to_owned(), true),
                None => (text.clone(), false),
            };
            let mut m = StopMatcher::new(Arc::new(StopStrings::new(&stops)));
            let (mut out, mut stopped) = (String::new(), false);
            let chars: Vec<char> = text.chars().collect();
            let mut i = 0;
            while i < chars.len() && !stopped {
                let n = rng.random_range(1..4).min(chars.len() - i);
                let delta: String = chars[i..i + n].iter().collect();
                i += n;
                match m.push(&delta) {
                    StopOutcome::Continue(t) => out.push_str(&t),
                    StopOutcome::Stopped(t) => {
                        out.push_str(&t);
                        stopped = true;
                    }
                }
            }
            if !stopped {
                out.push_str(&m.flush());
            }
            assert_eq!((out, stopped), expected, "stops {stops:?} text {text:?}");
        }
    }

    /// Time per token does not depend on the stop strings' length (before: every token searched the
    /// held-back text for every stop string and rescanned it for prefixes, so 16 stop strings the output
    /// keeps matching cost time in proportion to their 16 × length). Text that matches all 16 stop strings
    /// as far as it goes, one byte per token: 64 KiB stop strings against 4-byte ones.
    #[test]
    fn time_per_token_is_independent_of_stop_length() {
        let time = |len: usize| {
            let stop = format!("{}X", "b".repeat(len - 1));
            let stops: Vec<String> = (0..16).map(|_| stop.clone()).collect();
            let mut m = StopMatcher::new(Arc::new(StopStrings::new(&stops)));
            let started = std::time::Instant::now();
            for _ in 0..20_000 {
                assert!(matches!(m.push("b"), StopOutcome::Continue(_)));
            }
            started.elapsed()
        };
        // Alternated, best of three each (the machine is noisy).
        let (mut short, mut long) = (std::time::Duration::MAX, std::time::Duration::MAX);
        for _ in 0..3 {
            short = short.min(time(4));
            long = long.min(time(64 * 1024));
        }
        assert!(
            long < short * 2 + std::time::Duration::from_millis(5),
            "64 KiB stops {long:?}, 4-byte stops {short:?}"
        );
    }

    #[test]
    fn no_stops_pass_through() {
        let mut m = matcher(&[]);
        assert_eq!(m.push("hello"), StopOutcome::Continue("hello".into()));
    }
}
