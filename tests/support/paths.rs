//! Where things are in the repository: its root, the test fixtures and
//! the bundled policy directory. Nothing here reads or writes files.

use std::path::PathBuf;

/// The repository root (the crate's manifest directory).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file under `tests/fixtures`.
pub fn fixture(relative: &str) -> PathBuf {
    repo().join("tests/fixtures").join(relative)
}

/// The repository's bundled policy directory.
pub fn policies_dir() -> PathBuf {
    repo().join("policies")
}
