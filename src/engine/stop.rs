//! Stop strings matched across token boundaries. Text that could still become a stop string is held back;
//! a matched stop string and everything after it is never sent to the client.

/// Streams text through, cutting at the first stop string.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    max_len: usize,
}

/// What to emit after pushing a delta.
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text safe to send now; generation continues.
    Continue(String),
    /// Text before the stop string; generation must end.
    Stopped(String),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        let max_len = stops.iter().map(|s| s.len()).max().unwrap_or(0);
        Self {
            stops,
            pending: String::new(),
            max_len,
        }
    }

    pub fn push(&mut self, delta: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue(delta.to_owned());
        }
        self.pending.push_str(delta);
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..pos].to_owned();
            self.pending.clear();
            return StopOutcome::Stopped(out);
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        let mut keep_from = self.pending.len();
        let start = self
            .pending
            .len()
            .saturating_sub(self.max_len.saturating_sub(1));
        for i in start..self.pending.len() {
            if !self.pending.is_char_boundary(i) {
                continue;
            }
            let tail = &self.pending[i..];
            if self.stops.iter().any(|s| s.starts_with(tail)) {
                keep_from = i;
                break;
            }
        }
        let out = self.pending[..keep_from].to_owned();
        self.pending.drain(..keep_from);
        StopOutcome::Continue(out)
    }

    /// Text held back when generation ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_across_deltas_is_never_emitted() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("abc E"), StopOutcome::Continue("abc ".into()));
        assert_eq!(m.push("N"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("Dxyz"), StopOutcome::Stopped(String::new()));
    }

    #[test]
    fn false_prefix_is_released() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("EN"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("o"), StopOutcome::Continue("ENo".into()));
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn earliest_stop_wins_and_multibyte_is_safe() {
        let mut m = StopMatcher::new(vec!["é!".into(), "b".into()]);
        assert_eq!(m.push("aé"), StopOutcome::Continue("a".into()));
        assert_eq!(m.push("xb"), StopOutcome::Stopped("éx".into()));
    }

    #[test]
    fn no_stops_pass_through() {
        let mut m = StopMatcher::new(vec![]);
        assert_eq!(m.push("hello"), StopOutcome::Continue("hello".into()));
    }
}
