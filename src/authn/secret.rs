//! Secret files: the one rule by which every secret Portcullis reads from a
//! file becomes bytes (JWT HMAC secrets, payload-signing secrets, the audit
//! checkpoint key, the introspection client secret).
//!
//! **The file's bytes are the secret, exactly.** One exception: a file that
//! is text (UTF-8 without control characters) followed by a single line
//! ending (`\n` or `\r\n`) loses that line ending, because `echo`, editors
//! and heredocs add one that the issuer never signed with. Nothing else is
//! ever trimmed: a binary secret (`head -c 32 /dev/urandom > key`) is taken
//! byte for byte whatever its last bytes are (a tab, a space, a newline), and
//! spaces inside or around a text secret are part of it.
//!
//! Why not "trim trailing whitespace": random bytes end in ASCII whitespace
//! about one time in 50, and trimming silently changed such a secret (a 32-byte key
//! ending in a tab was refused as 31 bytes; a 40-byte one ending in `\n `
//! verified nothing). Why not "always drop a final `\n`": a random secret
//! ends in `0x0A` one time in 256, and would then be one byte short without
//! a word. Text with a control character in it (a tab, a second line) is not
//! "text" here, so it too is taken exactly. To use a secret that is written
//! encoded (base64, hex), decode it into the file (`base64 -d`, `xxd -r -p`):
//! an encoded file is used as the characters it holds.

use std::path::Path;

/// Reads the secret in `path` by the rule above.
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = std::fs::read(path)?;
    let len = secret(&bytes).len();
    bytes.truncate(len);
    Ok(bytes)
}

/// The secret a file holding `file` means: all of it, but for one final
/// line ending after text.
pub fn secret(file: &[u8]) -> &[u8] {
    let body = file
        .strip_suffix(b"\r\n")
        .or_else(|| file.strip_suffix(b"\n"));
    match body {
        Some(text) if is_text(text) => text,
        _ => file,
    }
}

/// UTF-8 without control characters (C0, DEL, C1): what a person types.
fn is_text(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|s| !s.chars().any(char::is_control))
}

/// How the rule reads, for messages about a secret that is too short.
pub const RULE: &str =
    "the file's bytes are the secret; only a final line ending after text is dropped";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_file_ending_in_a_tab_keeps_all_32_bytes() {
        let mut key = [0x5au8; 32];
        key[0] = 0x00;
        key[31] = b'\t';
        assert_eq!(secret(&key), key);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, key).unwrap();
        assert_eq!(read(&path).unwrap(), key);
    }

    #[test]
    fn secret_file_ending_in_newline_space_keeps_all_40_bytes() {
        let mut key = vec![0xc3u8; 38];
        key.extend_from_slice(b"\n ");
        assert_eq!(secret(&key).len(), 40);
        let text = b"0123456789abcdef0123456789abcdef012345\n ";
        assert_eq!(
            secret(text),
            text,
            "text with a line break inside is not one line"
        );
    }

    #[test]
    fn binary_secret_ending_in_a_newline_byte_is_not_shortened() {
        let mut key = vec![0x00u8, 0xff, 0x10];
        key.extend_from_slice(&[0x41; 28]);
        key.push(b'\n');
        assert_eq!(secret(&key), key.as_slice());
    }

    #[test]
    fn one_line_ending_after_text_is_dropped_and_nothing_else() {
        assert_eq!(secret(b"s3cret\n"), b"s3cret");
        assert_eq!(secret(b"s3cret\r\n"), b"s3cret");
        assert_eq!(secret(b"s3cret"), b"s3cret");
        assert_eq!(
            secret(b"s3cret\n\n"),
            b"s3cret\n\n",
            "two line endings: not one line of text"
        );
        assert_eq!(secret(b" s3cret \n"), b" s3cret ");
        assert_eq!(
            secret(b"s3cret\t\n"),
            b"s3cret\t\n",
            "a tab makes it binary"
        );
        assert_eq!(secret("sécret\n".as_bytes()), "sécret".as_bytes());
        assert_eq!(secret(b"\n"), b"");
        assert_eq!(secret(b""), b"");
    }
}
