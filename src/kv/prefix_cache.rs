//! Automatic prefix caching, tenant-scoped by construction. A full KV block is known by a hash chain:
//! `h₀ = SHA-256(tenant seed)`, `hᵢ₊₁ = SHA-256(hᵢ ‖ the block's token ids)`, where the tenant seed is a
//! keyed hash the server derives from the authenticated API key (a client can neither set nor guess it):
//! the same tokens under another tenant give other hashes, so nothing is shared across tenants.
//!
//! The cache holds one reference to each block it knows (the allocator's refcount), so a finished
//! sequence's full blocks outlive it and a later request of the same tenant with the same prefix adopts
//! them instead of recomputing; its partly filled last block is kept too (hashed with its token count,
//! [`partial_hash`]), and a later request continuing the same tokens gets a copy of it (copy-on-write:
//! it goes on writing into that block). It is bounded: a block is evicted (least recently used first) when the
//! pool needs it, and expires `ttl` after its last use; either way, once no sequence holds it, the block
//! is freed and zeroed. Memory only; nothing is written anywhere.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::allocator::BlockAllocator;

pub type BlockHash = [u8; 32];

/// Where a sequence's blocks sit in the prefix cache: its tenant's chain seed and the hashes of its
/// prompt's full blocks (computed off the engine thread, when the request was prepared).
#[derive(Debug, Clone)]
pub struct PrefixKey {
    pub seed: BlockHash,
    pub prompt_hashes: Vec<BlockHash>,
}

/// The first link of a tenant's chains.
pub fn chain_seed(tenant: &[u8; 32]) -> BlockHash {
    let mut h = Sha256::new();
    h.update(b"moeserve prefix cache v1");
    h.update(tenant);
    h.finalize().into()
}

/// The hash of a full block of `tokens` following the block hashed `parent`.
pub fn chain_hash(parent: &BlockHash, tokens: &[u32]) -> BlockHash {
    let mut h = Sha256::new();
    h.update(parent);
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    h.finalize().into()
}

/// The hash of a partly filled block holding `tokens` (fewer than a block) after the block hashed
/// `parent`: a finished sequence's last block, which a later request whose prompt continues the same
/// tokens copies instead of recomputing them. Domain-separated from [`chain_hash`], so a partial block
/// can never stand for a full one.
pub fn partial_hash(parent: &BlockHash, tokens: &[u32]) -> BlockHash {
    let mut h = Sha256::new();
    h.update(b"partial");
    h.update(parent);
    h.update((tokens.len() as u32).to_le_bytes());
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    h.finalize().into()
}

/// The hash chain of the full blocks of `tokens`.
pub fn chain(seed: &BlockHash, tokens: &[u32], block_size: usize) -> Vec<BlockHash> {
    let mut out = Vec::with_capacity(tokens.len() / block_size);
    let mut h = *seed;
    for block in tokens.chunks_exact(block_size) {
        h = chain_hash(&h, block);
        out.push(h);
    }
    out
}

struct Entry {
    block: u32,
    /// Tick of the last use (key into `lru`).
    tick: u64,
    used: Instant,
}

/// Counters for metrics (no content).
#[derive(Debug, Default, Clone, Copy)]
pub struct PrefixCacheCounters {
    /// Prompt tokens looked up, and those found cached.
    pub queried_tokens: u64,
    pub hit_tokens: u64,
    pub evictions: u64,
    pub expirations: u64,
}

pub struct PrefixCache {
    ttl: Duration,
    entries: HashMap<BlockHash, Entry>,
    /// Least recently used first: tick → hash.
    lru: BTreeMap<u64, BlockHash>,
    tick: u64,
    pub counters: PrefixCacheCounters,
}

impl PrefixCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            counters: PrefixCacheCounters::default(),
        }
    }

    /// Blocks the cache holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn touch(&mut self, hash: &BlockHash, now: Instant) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.entries.get_mut(hash) {
            self.lru.remove(&e.tick);
            e.tick = tick;
            e.used = now;
            self.lru.insert(tick, *hash);
        }
    }

    /// The cached blocks of the longest prefix of `hashes`, each retained once for the caller (who now
    /// holds them in its block table). `tokens` is the prompt length, for the hit-rate counters.
    pub fn lookup(
        &mut self,
        hashes: &[BlockHash],
        tokens: usize,
        block_size: usize,
        alloc: &mut BlockAllocator,
    ) -> Vec<u32> {
        let now = Instant::now();
        let mut blocks = Vec::new();
        for h in hashes {
            let Some(block) = self.entries.get(h).map(|e| e.block) else {
                break;
            };
            if alloc.retain(block).is_err() {
                break;
            }
            self.touch(h, now);
            blocks.push(block);
        }
        self.counters.queried_tokens += tokens as u64;
        self.counters.hit_tokens += (blocks.len() * block_size) as u64;
        blocks
    }

    /// The cached partly filled block hashed `hash` (see [`partial_hash`]), retained once for the caller
    /// (who copies it, then releases it); `tokens` is how many of its slots are filled, for the counters.
    pub fn lookup_partial(
        &mut self,
        hash: &BlockHash,
        tokens: usize,
        alloc: &mut BlockAllocator,
    ) -> Option<u32> {
        let block = self.entries.get(hash)?.block;
        alloc.retain(block).ok()?;
        self.touch(hash, Instant::now());
        self.counters.hit_tokens += tokens as u64;
        Some(block)
    }

    /// Offers the full blocks of a sequence leaving (or preempted): `hashes[i]` is block `blocks[i]`'s
    /// hash (a [`partial_hash`] for a partly filled last block). Blocks not cached yet are retained by
    /// the cache; known ones are refreshed.
    pub fn insert(&mut self, hashes: &[BlockHash], blocks: &[u32], alloc: &mut BlockAllocator) {
        let now = Instant::now();
        for (h, &block) in hashes.iter().zip(blocks) {
            if self.entries.contains_key(h) {
                self.touch(h, now);
                continue;
            }
            if alloc.retain(block).is_err() {
                continue;
            }
            self.tick += 1;
            self.entries.insert(
                *h,
                Entry {
                    block,
                    tick: self.tick,
                    used: now,
                },
            );
            self.lru.insert(self.tick, *h);
        }
    }

    /// Cached blocks no sequence holds (the cache is their only holder): what eviction could free.
    pub fn evictable(&self, alloc: &BlockAllocator) -> usize {
        self.entries
            .values()
            .filter(|e| alloc.refcount(e.block) == 1)
            .count()
    }

    /// Frees up to `want` blocks, least recently used first, among those only the cache holds; returns
    /// the freed blocks (to be zeroed).
    pub fn evict(&mut self, want: usize, alloc: &mut BlockAllocator) -> Vec<u32> {
        let mut freed = Vec::new();
        let candidates: Vec<(u64, BlockHash)> = self
            .lru
            .iter()
            .filter(|(_, h)| {
                self.entries
                    .get(*h)
                    .is_some_and(|e| alloc.refcount(e.block) == 1)
            })
            .take(want)
            .map(|(t, h)| (*t, *h))
            .collect();
        for (tick, h) in candidates {
            if self.drop_entry(tick, &h, alloc, &mut freed) {
                self.counters.evictions += 1;
            }
        }
        freed
    }

    /// Forgets entry `hash` (at LRU position `tick`) and releases the cache's reference to its block; a
    /// block that became free goes to `freed`. Whether there was such an entry.
    fn drop_entry(
        &mut self,
        tick: u64,
        hash: &BlockHash,
        alloc: &mut BlockAllocator,
        freed: &mut Vec<u32>,
    ) -> bool {
        self.lru.remove(&tick);
        let Some(e) = self.entries.remove(hash) else {
            return false;
        };
        if alloc.release(e.block).unwrap_or(false) {
            freed.push(e.block);
        }
        true
    }

    /// Drops every entry unused for longer than the TTL; returns the blocks that became free (to be
    /// zeroed). A block a running sequence still holds stays with it, uncached.
    pub fn expire(&mut self, alloc: &mut BlockAllocator) -> Vec<u32> {
        let now = Instant::now();
        let mut freed = Vec::new();
        while let Some((&tick, h)) = self.lru.iter().next() {
            let h = *h;
            let expired = self
                .entries
                .get(&h)
                .is_none_or(|e| now.duration_since(e.used) >= self.ttl);
            if !expired {
                break;
            }
            if self.drop_entry(tick, &h, alloc, &mut freed) {
                self.counters.expirations += 1;
            }
        }
        freed
    }

    /// Drops everything (shutdown): the blocks that became free.
    pub fn clear(&mut self, alloc: &mut BlockAllocator) -> Vec<u32> {
        let mut freed = Vec::new();
        for (_, e) in self.entries.drain() {
            if alloc.release(e.block).unwrap_or(false) {
                freed.push(e.block);
            }
        }
        self.lru.clear();
        freed
    }

    /// The blocks the cache holds.
    pub fn blocks(&self) -> impl Iterator<Item = u32> + '_ {
        self.entries.values().map(|e| e.block)
    }

    /// When the oldest entry expires (to wake an idle engine for it).
    pub fn next_expiry(&self) -> Option<Instant> {
        let (_, h) = self.lru.iter().next()?;
        self.entries.get(h).map(|e| e.used + self.ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_depend_on_the_tenant_and_every_earlier_token() {
        let (a, b) = (chain_seed(&[1; 32]), chain_seed(&[2; 32]));
        let tokens: Vec<u32> = (0..10).collect();
        let ca = chain(&a, &tokens, 4);
        assert_eq!(ca.len(), 2, "full blocks only");
        assert_ne!(ca, chain(&b, &tokens, 4), "another tenant, other hashes");
        let mut other = tokens.clone();
        other[0] = 99;
        let co = chain(&a, &other, 4);
        assert_ne!(co[1], ca[1], "a change in block 0 changes block 1's hash");
    }

    #[test]
    fn lookup_insert_evict_expire_keep_refcounts_right() {
        let mut alloc = BlockAllocator::new(4);
        let mut cache = PrefixCache::new(Duration::from_secs(3600));
        let seed = chain_seed(&[7; 32]);
        let hashes = chain(&seed, &[1, 2, 3, 4, 5, 6, 7, 8], 4);
        let (x, y) = (alloc.allocate().unwrap(), alloc.allocate().unwrap());
        cache.insert(&hashes, &[x, y], &mut alloc);
        // The sequence leaves: the cache is the blocks' only holder.
        assert!(!alloc.release(x).unwrap() && !alloc.release(y).unwrap());
        assert_eq!(cache.evictable(&alloc), 2);
        let got = cache.lookup(&hashes, 9, 4, &mut alloc);
        assert_eq!(got, [x, y]);
        assert_eq!(cache.counters.hit_tokens, 8);
        assert_eq!(cache.evictable(&alloc), 0, "in use again");
        for b in got {
            alloc.release(b).unwrap();
        }
        assert_eq!(cache.evict(1, &mut alloc), [x], "least recently used first");
        let mut expiring = PrefixCache::new(Duration::ZERO);
        let z = alloc.allocate().unwrap();
        expiring.insert(&hashes[..1], &[z], &mut alloc);
        alloc.release(z).unwrap();
        assert_eq!(expiring.expire(&mut alloc), [z]);
        assert!(expiring.is_empty());
    }
}
