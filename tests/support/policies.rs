//! Policy directories for tests: copies of the bundled `policies/` that a
//! test may change or add to without touching the repository.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::paths::{fixture, policies_dir};

/// Copies one entry of a policy directory into `to`: a file, or the
/// `schemas/` directory (body schemas) with its files. Other directories
/// (tests/, shadow/, quotas/) are left to the caller.
fn copy_policy_entry(from: &Path, to: &Path) {
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

/// Copies the bundled policy directory into `to` (created if missing):
/// its files and `schemas/`, not its `tests/`.
pub fn copy_bundled_policies(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(policies_dir()).unwrap() {
        copy_policy_entry(&entry.unwrap().path(), to);
    }
}

/// Copies the bundled policy test cases (`policies/tests/`) into
/// `to/tests`.
pub fn copy_bundled_policy_tests(to: &Path) {
    let tests = to.join("tests");
    std::fs::create_dir_all(&tests).unwrap();
    for entry in std::fs::read_dir(policies_dir().join("tests")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tests.join(entry.file_name())).unwrap();
    }
}

/// A copy of the bundled policy directory in a temporary directory,
/// removed on drop.
pub struct PolicyDir {
    dir: TempDir,
}

impl PolicyDir {
    /// The bundled files and `schemas/` (see [`copy_bundled_policies`]).
    pub fn bundled() -> PolicyDir {
        let dir = tempfile::tempdir().expect("temp dir");
        copy_bundled_policies(dir.path());
        PolicyDir { dir }
    }

    /// With the bundled test cases too (`tests/`).
    pub fn with_policy_tests(self) -> PolicyDir {
        copy_bundled_policy_tests(self.path());
        self
    }

    /// With the tight test quotas (`tests/fixtures/quotas/quotas.yaml`)
    /// in place of the bundled ones, and an empty `quotas/`.
    pub fn with_test_quotas(self) -> PolicyDir {
        std::fs::create_dir_all(self.path().join("quotas")).unwrap();
        std::fs::copy(
            fixture("quotas/quotas.yaml"),
            self.path().join("quotas.yaml"),
        )
        .unwrap();
        self
    }

    /// With the test quota file of a second domain,
    /// `quotas/messaging.yaml`.
    pub fn with_messaging_quotas(self) -> PolicyDir {
        std::fs::create_dir_all(self.path().join("quotas")).unwrap();
        std::fs::copy(
            fixture("quotas/quotas/messaging.yaml"),
            self.path().join("quotas/messaging.yaml"),
        )
        .unwrap();
        self
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The directory as a string, for command lines.
    pub fn arg(&self) -> &str {
        self.path().to_str().expect("temp paths are UTF-8")
    }

    /// Writes `text` to the file `relative` (parents created); returns its
    /// path.
    pub fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The text of the file `relative`.
    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.path().join(relative)).unwrap()
    }
}
