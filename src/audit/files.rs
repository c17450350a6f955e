//! The audit files on disk: their directory (created, or the file in its
//! way named), their names (`audit-<first seq>.jsonl`), the listing in
//! chain order, opening one to append, and finding where the
//! chain resumes after a stop or a crash (cutting off a torn last line).
//! The writer and the readers share these; nothing here chains records.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::chain::{leaf_hash, GENESIS};
use super::writer::StartError;

/// Prefix and suffix of audit file names: `audit-<first seq, 20 digits>.jsonl`.
pub const FILE_PREFIX: &str = "audit-";
/// See [`FILE_PREFIX`].
pub const FILE_SUFFIX: &str = ".jsonl";
/// Creates the audit directory `dir` if missing. A file in its way, at
/// `dir` or above it, is named as such: `create_dir_all` says only
/// `File exists` or `Not a directory`.
pub(super) fn create_directory(dir: &Path) -> Result<(), StartError> {
    std::fs::create_dir_all(dir).map_err(|e| {
        // The nearest path that exists, links followed: a file there is
        // what stopped the creation.
        let in_the_way = dir
            .ancestors()
            .filter(|p| !p.as_os_str().is_empty())
            .find_map(|p| std::fs::metadata(p).ok().map(|m| (p, m)))
            .filter(|(_, m)| !m.is_dir());
        match in_the_way {
            Some((file, _)) => StartError::NotADirectory {
                dir: dir.to_path_buf(),
                file: file.to_path_buf(),
            },
            None => StartError::Directory {
                dir: dir.to_path_buf(),
                message: format!("cannot create: {e}"),
            },
        }
    })
}

/// The message of [`StartError::NotADirectory`].
pub(super) fn not_a_directory(dir: &Path, file: &Path) -> String {
    let what = if file == dir {
        format!(
            "audit directory {} is a file, not a directory",
            dir.display()
        )
    } else {
        format!(
            "audit directory {} cannot be created: {} is a file, not a directory",
            dir.display(),
            file.display()
        )
    };
    format!(
        "{what}; move the file aside or set audit.directory to a directory this process may write"
    )
}

/// The sorted audit files of a directory with the first seq each holds.
pub fn list_files(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(seq) = name
            .strip_prefix(FILE_PREFIX)
            .and_then(|r| r.strip_suffix(FILE_SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        files.push((seq, entry.path()));
    }
    files.sort();
    Ok(files)
}

pub(super) fn file_name(first_seq: u64) -> String {
    format!("{FILE_PREFIX}{first_seq:020}{FILE_SUFFIX}")
}

pub(super) fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(path)
}

/// Finds the last record on disk: `(next seq, its hash, file to append to)`.
/// An incomplete last line (a write torn by a crash) is cut off: it was
/// never a whole record.
pub(super) fn resume(
    dir: &Path,
    dir_err: &dyn Fn(String) -> StartError,
) -> Result<(u64, String, PathBuf), StartError> {
    let mut files = list_files(dir).map_err(|e| dir_err(format!("cannot list: {e}")))?;
    while let Some((_, path)) = files.last().cloned() {
        let last = last_line(&path).map_err(|e| dir_err(format!("{}: {e}", path.display())))?;
        let Some(line) = last else {
            // A file created at rotation right before a crash: no records.
            std::fs::remove_file(&path)
                .map_err(|e| dir_err(format!("cannot remove empty {}: {e}", path.display())))?;
            files.pop();
            continue;
        };
        let damaged = |reason: &str| StartError::DamagedTail {
            file: path.clone(),
            reason: reason.to_string(),
        };
        let value: Value = serde_json::from_str(&line).map_err(|_| damaged("not JSON"))?;
        let seq = value
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or_else(|| damaged("no seq"))?;
        let hash = value
            .get("hash")
            .and_then(Value::as_str)
            .ok_or_else(|| damaged("no hash"))?;
        if leaf_hash(&value) != hash {
            return Err(damaged("its content does not match its hash"));
        }
        let next = seq
            .checked_add(1)
            .ok_or_else(|| damaged("its seq is the largest possible"))?;
        return Ok((next, hash.to_string(), path));
    }
    Ok((0, GENESIS.to_string(), dir.join(file_name(0))))
}

/// The last complete line of a file, truncating an incomplete one.
fn last_line(path: &Path) -> std::io::Result<Option<String>> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    // Records are small; the last one is within the last 1 MiB.
    let start = len.saturating_sub(1 << 20);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    let complete = match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    };
    if complete < buf.len() {
        tracing::warn!(
            file = %path.display(),
            bytes = buf.len() - complete,
            "audit file ends in an incomplete line (a write torn by a crash); cutting it off"
        );
        file.set_len(start + complete as u64)?;
        file.sync_all()?;
        buf.truncate(complete);
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .trim_end_matches('\n')
        .rsplit('\n')
        .next()
        .filter(|l| !l.is_empty())
        .map(str::to_string))
}
