//! The policy directory as one immutable, validated [`Snapshot`]: loading
//! and checking it (`snapshot`), versioning it (`gitrev`: git commit or
//! content hash, pinned revisions) and swapping it atomically on change
//! (`reload`). Nothing here decides a request; the pipeline does.

pub mod gitrev;
pub mod reload;
pub mod snapshot;

pub use reload::PolicyStore;
pub use snapshot::Snapshot;
