//! The paged KV cache: a refcounting block allocator, per-sequence block tables, and the cache tensors that
//! attention writes through a slot mapping and reads through block tables.

pub(crate) mod allocator;
pub(crate) mod block_table;
pub(crate) mod cache;
pub(crate) mod layout;
pub mod prefix_cache;

pub use allocator::BlockAllocator;
pub use block_table::BlockTable;
pub use cache::KvCache;
pub use layout::KvLayout;
pub use prefix_cache::{BlockHash, PrefixCache};
