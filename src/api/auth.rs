//! API keys: configured as SHA-256 hashes (never the key itself), each with an id, a role and optional
//! per-minute limits. A presented key is hashed and compared with every configured hash in constant time.
//! When keys are configured, every route but `/health` needs `Authorization: Bearer <key>`; `/metrics`
//! needs the admin role. Limits: requests per minute and tokens (prompt + completion) per minute, answered
//! with 429 and Retry-After.

use std::collections::HashMap;
use std::sync::Mutex;
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
    requests: u64,
    tokens: u64,
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

    /// Admits one request for `entry`, or says how long to wait.
    pub fn admit(&self, entry: &KeyEntry) -> Result<(), Duration> {
        if entry.requests_per_minute.is_none() && entry.tokens_per_minute.is_none() {
            return Ok(());
        }
        let Ok(mut windows) = self.windows.lock() else {
            return Ok(());
        };
        let w = windows.entry(entry.id.clone()).or_default();
        let now = Instant::now();
        let minute = Duration::from_secs(60);
        let started = *w.started.get_or_insert(now);
        if now.duration_since(started) >= minute {
            *w = Window {
                started: Some(now),
                ..Default::default()
            };
        }
        let wait = minute.saturating_sub(now.duration_since(w.started.unwrap_or(now)));
        if entry.requests_per_minute.is_some_and(|l| w.requests >= l)
            || entry.tokens_per_minute.is_some_and(|l| w.tokens >= l)
        {
            return Err(wait.max(Duration::from_secs(1)));
        }
        w.requests += 1;
        Ok(())
    }

    /// Adds tokens used by `key_id` to its current window.
    pub fn record_tokens(&self, key_id: &str, tokens: u64) {
        if let Ok(mut windows) = self.windows.lock() {
            if let Some(w) = windows.get_mut(key_id) {
                w.tokens += tokens;
            }
        }
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
        assert!(wait.as_secs() >= 1 && wait.as_secs() <= 60);
        let ops = k.authenticate("secret-ops").unwrap().clone();
        assert!(k.admit(&ops).is_ok());
        k.record_tokens("ops", 10);
        assert!(k.admit(&ops).is_err());
    }

    #[test]
    fn rejects_bad_lines() {
        assert!(Keys::parse("bot nothex").is_err());
        assert!(Keys::parse("bot abcd").is_err());
        assert!(Keys::parse(&format!("a {} rpm=x", hash_key("k"))).is_err());
        assert!(Keys::parse(&format!("a {h}\na {h}", h = hash_key("k"))).is_err());
    }
}
