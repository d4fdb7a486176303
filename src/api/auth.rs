//! API keys: configured as SHA-256 hashes (never the key itself), each with an id, a role and optional
//! per-minute limits. A presented key is hashed and compared with every configured hash in constant time.
//! When keys are configured, every route but `/health` needs `Authorization: Bearer <key>`; `/metrics`
//! needs the admin role. Limits: requests per minute and tokens (prompt + completion) per minute, answered
//! with 429 and Retry-After (the seconds until the key's window ends). Tokens are reserved when a request
//! is admitted (prompt + max_tokens) and settled to what it used when it ends, dropped streams included.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Inference,
    Admin,
}

/// One configured key (its hash, never the key).
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub id: String,
    hash: [u8; 32],
    pub role: Role,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

/// The identity a request was authenticated as (its key id, safe to log and to use as a metrics label).
#[derive(Debug, Clone)]
pub struct KeyId(pub String);

#[derive(Default)]
struct Window {
    started: Option<Instant>,
    /// Which minute window this is (a reservation made in an earlier one is not taken out of this one).
    generation: u64,
    requests: u64,
    /// Tokens of finished (or dropped) requests.
    tokens: u64,
    /// Tokens reserved by requests in flight (prompt + their max_tokens).
    reserved: u64,
}

const MINUTE: Duration = Duration::from_secs(60);

impl Window {
    /// Starts a new window when the current one is a minute old.
    fn roll(&mut self, now: Instant) {
        let started = *self.started.get_or_insert(now);
        if now.duration_since(started) >= MINUTE {
            *self = Window {
                started: Some(now),
                generation: self.generation + 1,
                ..Default::default()
            };
        }
    }

    /// Until this window ends (at least a second: Retry-After is in whole seconds).
    fn remaining(&self, now: Instant) -> Duration {
        let started = self.started.unwrap_or(now);
        MINUTE
            .saturating_sub(now.duration_since(started))
            .max(Duration::from_secs(1))
    }
}

/// Why a token reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveError {
    /// Not now: wait this long for the window to end.
    Wait(Duration),
    /// Never: the request alone needs more than the key's limit (`needed`, `limit`).
    TooLarge { needed: u64, limit: u64 },
}

/// Tokens a request holds against its key's per-minute limit from admission until it ends: its
/// reservation is replaced by what it used when it finishes or is dropped (client gone), so concurrent
/// requests can never together exceed the limit.
pub struct TokenReservation {
    keys: Arc<Keys>,
    key_id: String,
    generation: u64,
    reserved: u64,
    /// Tokens used so far (prompt + generated); charged when the reservation ends.
    pub used: u64,
}

impl Drop for TokenReservation {
    fn drop(&mut self) {
        let mut windows = self.keys.windows();
        let Some(w) = windows.get_mut(&self.key_id) else {
            return;
        };
        w.roll(Instant::now());
        if w.generation == self.generation {
            w.reserved = w.reserved.saturating_sub(self.reserved);
        }
        w.tokens += self.used;
    }
}

/// All keys and their per-minute usage windows.
#[derive(Default)]
pub struct Keys {
    entries: Vec<KeyEntry>,
    windows: Mutex<HashMap<String, Window>>,
}

/// `sha256:` + hex, or bare hex, of the key.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl Keys {
    /// Parses key lines: `<id> <sha256-hex> [inference|admin] [rpm=N] [tpm=N]`; `#` starts a comment.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(id), Some(hash)) = (parts.next(), parts.next()) else {
                return Err(format!(
                    "line {}: expected \"<id> <sha256-hex> [role] [rpm=N] [tpm=N]\"",
                    n + 1
                ));
            };
            let hex_part = hash.strip_prefix("sha256:").unwrap_or(hash);
            let bytes = hex::decode(hex_part)
                .map_err(|_| format!("line {}: the hash is not hex", n + 1))?;
            let hash: [u8; 32] = bytes
                .try_into()
                .map_err(|_| format!("line {}: a SHA-256 hash has 64 hex digits", n + 1))?;
            let mut entry = KeyEntry {
                id: id.to_owned(),
                hash,
                role: Role::Inference,
                requests_per_minute: None,
                tokens_per_minute: None,
            };
            for p in parts {
                match p {
                    "admin" => entry.role = Role::Admin,
                    "inference" => entry.role = Role::Inference,
                    _ => {
                        let (k, v) = p
                            .split_once('=')
                            .ok_or_else(|| format!("line {}: unknown field", n + 1))?;
                        let v: u64 = v
                            .parse()
                            .map_err(|_| format!("line {}: {k} needs a number", n + 1))?;
                        match k {
                            "rpm" => entry.requests_per_minute = Some(v),
                            "tpm" => entry.tokens_per_minute = Some(v),
                            _ => return Err(format!("line {}: unknown field {k}", n + 1)),
                        }
                    }
                }
            }
            if entries.iter().any(|e: &KeyEntry| e.id == entry.id) {
                return Err(format!("line {}: duplicate key id", n + 1));
            }
            entries.push(entry);
        }
        Ok(Self {
            entries,
            windows: Mutex::new(HashMap::new()),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entry whose hash matches `presented`, comparing against every entry in constant time.
    pub fn authenticate(&self, presented: &str) -> Option<&KeyEntry> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for e in &self.entries {
            if bool::from(e.hash.ct_eq(&digest)) && found.is_none() {
                found = Some(e);
            }
        }
        found
    }

    /// The usage windows. A poisoned lock (a panic elsewhere while it was held) still holds valid
    /// counters: limits stay enforced (fail closed), never skipped.
    fn windows(&self) -> std::sync::MutexGuard<'_, HashMap<String, Window>> {
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits one request for `entry` (its request limit, and its token limit not yet used up), or says
    /// how long to wait.
    pub fn admit(&self, entry: &KeyEntry) -> Result<(), Duration> {
        if entry.requests_per_minute.is_none() && entry.tokens_per_minute.is_none() {
            return Ok(());
        }
        let mut windows = self.windows();
        let w = windows.entry(entry.id.clone()).or_default();
        let now = Instant::now();
        w.roll(now);
        if entry.requests_per_minute.is_some_and(|l| w.requests >= l)
            || entry
                .tokens_per_minute
                .is_some_and(|l| w.tokens + w.reserved >= l)
        {
            return Err(w.remaining(now));
        }
        w.requests += 1;
        Ok(())
    }

    /// The token limit of `key_id`, if it has one.
    pub fn token_limit(&self, key_id: &str) -> Option<u64> {
        self.entries
            .iter()
            .find(|e| e.id == key_id)
            .and_then(|e| e.tokens_per_minute)
    }

    /// Tokens `key_id` may still reserve in the current window (None: no token limit).
    pub fn tokens_left(&self, key_id: &str) -> Option<u64> {
        let limit = self.token_limit(key_id)?;
        let mut windows = self.windows();
        let w = windows.entry(key_id.to_owned()).or_default();
        w.roll(Instant::now());
        Some(limit.saturating_sub(w.tokens + w.reserved))
    }

    /// Reserves `tokens` for a request of `key_id` (None: the key has no token limit).
    pub fn reserve(
        self: &Arc<Self>,
        key_id: &str,
        tokens: u64,
    ) -> Result<Option<TokenReservation>, ReserveError> {
        let Some(limit) = self.token_limit(key_id) else {
            return Ok(None);
        };
        if tokens > limit {
            return Err(ReserveError::TooLarge {
                needed: tokens,
                limit,
            });
        }
        let mut windows = self.windows();
        let w = windows.entry(key_id.to_owned()).or_default();
        let now = Instant::now();
        w.roll(now);
        if w.tokens + w.reserved + tokens > limit {
            return Err(ReserveError::Wait(w.remaining(now)));
        }
        w.reserved += tokens;
        Ok(Some(TokenReservation {
            keys: self.clone(),
            key_id: key_id.to_owned(),
            generation: w.generation,
            reserved: tokens,
            used: 0,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::parse(&format!(
            "# comment\nbot {} rpm=2\nops sha256:{} admin tpm=10\n",
            hash_key("secret-bot"),
            hash_key("secret-ops")
        ))
        .unwrap()
    }

    #[test]
    fn authenticates_by_hash_with_roles() {
        let k = keys();
        assert_eq!(k.authenticate("secret-bot").unwrap().id, "bot");
        assert_eq!(k.authenticate("secret-ops").unwrap().role, Role::Admin);
        assert!(k.authenticate("secret-bo").is_none());
        assert!(k.authenticate("").is_none());
    }

    #[test]
    fn limits_requests_and_tokens_per_minute() {
        let k = keys();
        let bot = k.authenticate("secret-bot").unwrap().clone();
        assert!(k.admit(&bot).is_ok());
        assert!(k.admit(&bot).is_ok());
        let wait = k.admit(&bot).unwrap_err();
        assert!(
            wait.as_secs() >= 59 && wait.as_secs() <= 60,
            "the real wait: {wait:?}"
        );
        let k = Arc::new(k);
        let ops = k.authenticate("secret-ops").unwrap().clone();
        assert!(k.admit(&ops).is_ok());
        let mut r = k.reserve("ops", 8).unwrap().unwrap();
        // Reserved tokens count while the request runs: 8 + 3 > 10.
        assert!(matches!(k.reserve("ops", 3), Err(ReserveError::Wait(_))));
        assert_eq!(
            k.reserve("ops", 11).err(),
            Some(ReserveError::TooLarge {
                needed: 11,
                limit: 10
            })
        );
        // Settled to what it used: 5 of 10.
        r.used = 5;
        drop(r);
        assert_eq!(k.tokens_left("ops"), Some(5));
        if let Some(mut r) = k.reserve("ops", 5).unwrap() {
            r.used = 5;
        }
        assert!(k.admit(&ops).is_err(), "the token limit is used up");
        assert!(
            k.reserve("bot", 1_000_000).unwrap().is_none(),
            "no token limit"
        );
    }

    #[test]
    fn rejects_bad_lines() {
        assert!(Keys::parse("bot nothex").is_err());
        assert!(Keys::parse("bot abcd").is_err());
        assert!(Keys::parse(&format!("a {} rpm=x", hash_key("k"))).is_err());
        assert!(Keys::parse(&format!("a {h}\na {h}", h = hash_key("k"))).is_err());
    }
}
