//! Messages on stderr. A full or closed stderr loses the message, never the
//! trace and never with a panic (`eprintln!` panics when the write fails).
//! Untrusted names in a message are escaped by the caller (escape.rs).

use std::fmt;
use std::io::{self, Write};

/// One line on stderr; a failed write is ignored.
pub fn line(args: fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "{args}");
}

/// Text on stderr as it is (libbpf's messages end their own lines).
pub fn text(args: fmt::Arguments<'_>) {
    let _ = io::stderr().lock().write_fmt(args);
}

/// `say!("...", args)`: one line on stderr that can't panic (see the module).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::present::stderr::line(format_args!($($arg)*))
    };
}
