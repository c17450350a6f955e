//! Policy directories for tests: copies of the bundled `policies/` that a
//! test may change without touching the repository.

use std::path::Path;

/// Copies one entry of a policy directory into `to`: a file, or the
/// `schemas/` directory (body schemas) with its files. Other directories
/// (tests/, shadow/, quotas/) are left to the caller.
pub fn copy_policy_entry(from: &Path, to: &Path) {
    if from.is_file() {
        std::fs::copy(from, to.join(from.file_name().unwrap())).unwrap();
    } else if from.file_name().is_some_and(|n| n == "schemas") {
        let dir = to.join("schemas");
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
            }
        }
    }
}
