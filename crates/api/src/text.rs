//! Text that came from a user or a guest, made safe to print.
//!
//! VM names are checked where they enter (vm.conf and the API), but much
//! else that vmd reports is someone else's text: the host name a guest's
//! tools report, guestinfo values, paths, `{id}`s that name no VM. Printed
//! as they are, an escape sequence in one reaches the terminal of whoever
//! runs `vmctl status` (root, typically), and a newline forges a line for
//! whatever reads the output or a log. [`escape`] is how every such
//! string is shown: control characters and the characters that reorder
//! or hide text are written as escapes, so the output is one line of
//! visible characters; [`printable`] does the same for a message, whose
//! backslashes stay as they are (a message quoting a name has already
//! escaped it once); and [`shorten`] bounds what a message quotes.

use std::borrow::Cow;
use std::fmt::Write;

/// Characters that are not control characters but change how the text
/// around them is shown: bidirectional embeddings, overrides and isolates
/// (U+202A..U+202E, U+2066..U+2069, which can make a line read backwards),
/// the invisible marks and joiners around them, the line and paragraph
/// separators some terminals break lines at, and the byte order mark.
fn reorders_or_hides(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// Whether `c` is shown as an escape.
fn unprintable(c: char) -> bool {
    c.is_control() || reorders_or_hides(c)
}

/// Whether [`escape`] would change `c`.
fn needs_escape(c: char) -> bool {
    c == '\\' || unprintable(c)
}

/// `s` with `\` as `\\`; newline, tab and carriage return as `\n`, `\t`,
/// `\r`; other C0 controls and DEL as `\xHH`; C1 controls and the
/// characters that reorder or hide text (bidi overrides, zero-width
/// marks, U+2028/U+2029, U+FEFF) as `\u{H}`. Everything else, other
/// letters and symbols included, is left alone, so plain text comes back
/// unchanged (and not copied).
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_if(s, needs_escape)
}

/// A message made safe to print as [`escape`] makes data, except that
/// backslashes are left alone: `vm "\u{1b}" not found` comes out as it
/// is, while a raw ESC, newline or bidi override in it is escaped.
pub fn printable(s: &str) -> Cow<'_, str> {
    escape_if(s, unprintable)
}

fn escape_if(s: &str, needs: fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(needs) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if !needs(c) => out.push(c),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

/// [`escape`]d `s`, cut after `max` characters of the original with `...`
/// and the full length added: for messages that quote what a client sent
/// (a 70,000-character name need not come back whole to say it is wrong).
pub fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => escape(s).into_owned(),
        Some((at, _)) => format!("{}... ({} characters)", escape(&s[..at]), s.chars().count()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_left_alone() {
        for s in ["", "web1", "a = b", "é✓ 日本", "10.0.0.5", "pts/3"] {
            assert!(matches!(escape(s), Cow::Borrowed(_)), "{s:?}");
            assert_eq!(escape(s), s);
        }
    }

    #[test]
    fn what_could_reach_a_terminal_is_escaped() {
        assert_eq!(escape("x\nip = 1.2.3.4"), "x\\nip = 1.2.3.4");
        assert_eq!(escape("c:\\dir\tx\r"), "c:\\\\dir\\tx\\r");
        assert_eq!(escape("\x1b[2J\x7f\0"), "\\x1b[2J\\x7f\\x00");
        assert_eq!(escape("\u{85}\u{9b}é✓"), "\\u{85}\\u{9b}é✓");
        assert_eq!(
            escape("a\u{202e}b\u{2066}c\u{200b}d\u{2028}e\u{feff}"),
            "a\\u{202e}b\\u{2066}c\\u{200b}d\\u{2028}e\\u{feff}"
        );
        // Nothing unprintable survives, whatever the input.
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        assert!(!escape(&all).chars().any(needs_escape_but_backslash));
    }

    fn needs_escape_but_backslash(c: char) -> bool {
        c != '\\' && needs_escape(c)
    }

    #[test]
    fn messages_keep_their_backslashes() {
        assert_eq!(
            printable("vm \"\\u{1b}\" not found"),
            "vm \"\\u{1b}\" not found"
        );
        assert!(matches!(printable("a\\b"), Cow::Borrowed(_)));
        assert_eq!(
            printable("a\\b\x1b[2J\nc\u{202e}"),
            "a\\b\\x1b[2J\\nc\\u{202e}"
        );
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        assert!(!printable(&all).chars().any(unprintable));
    }

    #[test]
    fn shortened() {
        assert_eq!(shorten("web1", 64), "web1");
        assert_eq!(shorten("a\nb", 64), "a\\nb");
        let long = "x".repeat(70_000);
        assert_eq!(
            shorten(&long, 8),
            "xxxxxxxx... (70000 characters)".to_string()
        );
        // Cut at a character, not a byte.
        assert_eq!(shorten("ééé", 2), "éé... (3 characters)");
        assert_eq!(shorten("ab", 2), "ab");
    }
}
