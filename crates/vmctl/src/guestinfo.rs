//! `vmctl guestinfo ID`'s listing: one `KEY = VALUE` line per variable.
//!
//! Keys and values come from the guest, which may put anything but a NUL
//! in them, newlines included. Printed as they are, a value could forge
//! lines (`x\nip = 10.9.9.9`) for whatever reads the listing, or send
//! escape sequences to the terminal. So control characters and the
//! backslash are escaped here, C-style ([`api::text::escape`], as in every
//! other place vmctl prints what vmd reports); the exact text is what
//! `vmctl guestinfo ID KEY` prints when its output is not a terminal, and
//! `--json` has all of it unescaped.

use std::fmt::Write;

use api::v1::Guestinfo;

/// `s` with `\` as `\\`, newline, tab and carriage return as `\n`, `\t`,
/// `\r`, and other control characters as `\xHH` (C0, DEL) or `\u{H}`
/// (C1, and the characters that reorder or hide text). Everything else is
/// left alone. See [`api::text::escape`].
pub fn escape(s: &str) -> String {
    api::text::escape(s).into_owned()
}

/// The listing, in key order, each line ending in a newline. A key has
/// no space (the guest's `info-set` ends it at the first one), so the
/// first ` = ` of a line ends its key.
pub fn format_listing(vars: &Guestinfo) -> String {
    let mut out = String::new();
    for (k, v) in vars {
        let _ = writeln!(out, "{} = {}", escape(k), escape(v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_could_forge_lines() {
        assert_eq!(escape("10.0.0.5"), "10.0.0.5");
        assert_eq!(escape("a = b"), "a = b");
        assert_eq!(escape("x\nip = 1.2.3.4"), "x\\nip = 1.2.3.4");
        assert_eq!(escape("c:\\dir\tx\r"), "c:\\\\dir\\tx\\r");
        assert_eq!(escape("\x1b[2J\x7f"), "\\x1b[2J\\x7f");
        assert_eq!(escape("\u{85}é✓"), "\\u{85}é✓");
        assert_eq!(escape("a\u{202e}b"), "a\\u{202e}b");
    }

    #[test]
    fn listing() {
        let vars: Guestinfo = [("ip", "10.0.0.5"), ("empty", ""), ("multi", "a\nb")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(
            format_listing(&vars),
            "empty = \nip = 10.0.0.5\nmulti = a\\nb\n"
        );
        assert_eq!(format_listing(&Guestinfo::new()), "");
    }
}
