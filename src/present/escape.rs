//! Untrusted names (processes, files, cgroups: other users choose them) made
//! safe to print, in tables and JSON alike.

use std::fmt::Write as _;

/// Makes bytes from another user (a process or file name) safe to print:
/// printable UTF-8 stays, a backslash is doubled, `\n`, `\t` and `\r` are
/// written as such, other ASCII controls as `\xNN`, C1 controls as `\u{NN}`,
/// and bytes that are not UTF-8 as `\xNN`.
/// The result can't move a terminal's cursor or break a table row.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for ch in chunk.valid().chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_ascii_control() => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if c.is_control() => {
                    // C1 controls: U+009B is an 8-bit CSI to some terminals
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

/// A path for a message: escaped as names are, so a hostile file name can't
/// reach the terminal raw (`Path::display` would pass control characters
/// and turn bytes that are not UTF-8 into U+FFFD).
pub fn escape_path(path: &std::path::Path) -> String {
    escape_bytes(path.as_os_str().as_encoded_bytes())
}

/// The bytes of a NUL-terminated C string in a BPF record (a `char[N]` array), raw.
pub fn c_chars_bytes(chars: &[i8]) -> Vec<u8> {
    chars
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect()
}

/// A NUL-terminated C string from a BPF record (a `char[N]` array), escaped.
pub fn escape_c_chars(chars: &[i8]) -> String {
    escape_bytes(&c_chars_bytes(chars))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_neutralises_terminal_controls() {
        assert_eq!(escape_bytes(b"plain name"), "plain name");
        assert_eq!(escape_bytes(b"\x1b[31mred"), "\\x1b[31mred");
        assert_eq!(escape_bytes(b"a\nb\tc\rd"), "a\\nb\\tc\\rd");
        assert_eq!(escape_bytes(b"back\\slash"), "back\\\\slash");
        assert_eq!(escape_bytes(b"\xff\xfeok"), "\\xff\\xfeok");
        assert_eq!(escape_bytes("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(escape_bytes("\u{9b}2J".as_bytes()), "\\u{9b}2J");
        assert_eq!(escape_bytes(b"\x7f"), "\\x7f");
        let escaped = escape_bytes(b"\x1b]0;title\x07\x00");
        assert!(!escaped.chars().any(|c| c.is_control()), "{escaped}");
    }

    #[test]
    fn c_strings_stop_at_nul() {
        let mut comm = [0i8; 16];
        for (slot, byte) in comm.iter_mut().zip(b"sh\x1b") {
            *slot = *byte as i8;
        }
        assert_eq!(escape_c_chars(&comm), "sh\\x1b");
        use std::os::unix::ffi::OsStrExt;
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(b"/tmp/\x1b[31m\xff"));
        assert_eq!(escape_path(path), "/tmp/\\x1b[31m\\xff");
        assert_eq!(c_chars_bytes(&comm), b"sh\x1b");
    }
}
