//! The policy directory as one immutable, validated [`Snapshot`]: loading
//! it (`snapshot`, reading and parsing its files in `files`, cross-file
//! checks in `checks`), versioning it (`gitrev`: git commit or content
//! hash, pinned revisions) and swapping it atomically on change
//! (`reload`). Nothing here decides a request; the pipeline does.

mod checks;
mod files;
pub mod gitrev;
pub mod reload;
pub mod snapshot;

pub use checks::ContextClaim;
pub use reload::PolicyStore;
pub use snapshot::Snapshot;
