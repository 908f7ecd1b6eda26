//! Splits configuration text into tokens, like parse.y's yylex(): comments, `\` line
//! continuation, quoted strings, bare words, `$macro` references, punctuation and newlines.

/// What a token is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Tok {
    /// A bare word: a keyword, a number, a name, a path...
    Word(String),
    /// A quoted string (never a keyword).
    Str(String),
    /// `$name`; expanded by the parser, which knows the macros defined so far.
    Macro(String),
    LBrace,
    RBrace,
    Comma,
    Equals,
    Newline,
    Eof,
    /// Any other character (a syntax error wherever it appears).
    Other(char),
    /// Something the lexer could not read; the message is reported when the parser meets it.
    Error(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub line: u32,
}

/// The keywords: bare words with these spellings are never names, paths or macro names.
pub(crate) const KEYWORDS: &[&str] = &[
    "allow",
    "boot",
    "cdrom",
    "cmdline",
    // `cpu` is reserved so that a path or name before it on the same line ends there; its
    // attributes (`vendor`, `family`, `model`, `stepping`, `hide`) are only read after it,
    // so they stay usable as names and macro names.
    "cpu",
    "cpus",
    "delay",
    "device",
    "disable",
    "disk",
    "down",
    "enable",
    "format",
    "grace",
    "group",
    "include",
    "inet6",
    "initrd",
    "instance",
    "interface",
    "interfaces",
    "kernel",
    "lladdr",
    "local",
    "locked",
    "memory",
    "net",
    "owner",
    "parallel",
    "prefix",
    "rdomain",
    "sev",
    "seves",
    "socket",
    "staggered",
    "start",
    "switch",
    "up",
    "vm",
];

pub(crate) fn is_keyword(w: &str) -> bool {
    KEYWORDS.contains(&w)
}

/// `-?[0-9]+`.
pub(crate) fn is_number(w: &str) -> bool {
    let digits = w.strip_prefix('-').unwrap_or(w);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Characters a bare word is made of: what parse.y's `allowed_in_string` accepts, less the
/// quotes (a quote starts a new, adjacent token instead).
fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || (c.is_ascii_punctuation() && !"(){}!=#,\"'".contains(c))
}

fn is_macro_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

struct Reader<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: u32,
    /// Lines do not advance: the text is a macro's value, all of it at the line of its use.
    fixed: bool,
}

impl Reader<'_> {
    /// The next character, with `\` + newline (a line continuation) removed.
    fn peek(&mut self) -> Option<char> {
        loop {
            let c = *self.chars.peek()?;
            if c != '\\' {
                return Some(c);
            }
            let mut ahead = self.chars.clone();
            ahead.next();
            match ahead.next() {
                Some('\n') => {}
                Some('\r') if ahead.next() == Some('\n') => {
                    self.chars.next();
                }
                _ => return Some(c),
            }
            self.chars.next();
            self.chars.next();
            self.newline();
        }
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.chars.next();
        Some(c)
    }

    fn newline(&mut self) {
        if !self.fixed {
            self.line += 1;
        }
    }
}

/// Tokenizes `text`, whose first line is `line`. `expanding`: the text is a macro's value,
/// so `$` is an ordinary character (macros do not nest, as in OpenBSD) and every token is
/// at `line`. The result always ends with `Newline`, `Eof`.
pub(crate) fn lex(text: &str, line: u32, expanding: bool) -> Vec<Token> {
    let mut r = Reader {
        chars: text.chars().peekable(),
        line,
        fixed: expanding,
    };
    let mut out = Vec::new();
    while let Some(c) = r.peek() {
        let line = r.line;
        let push = |out: &mut Vec<Token>, tok| out.push(Token { tok, line });
        match c {
            ' ' | '\t' | '\r' | '\x0c' => {
                r.next();
            }
            '\n' => {
                r.next();
                push(&mut out, Tok::Newline);
                r.newline();
            }
            '#' => {
                // To the end of the line; a continuation continues the comment too.
                while r.peek().is_some_and(|c| c != '\n') {
                    r.next();
                }
            }
            '{' | '}' | ',' | '=' => {
                r.next();
                let tok = match c {
                    '{' => Tok::LBrace,
                    '}' => Tok::RBrace,
                    ',' => Tok::Comma,
                    _ => Tok::Equals,
                };
                push(&mut out, tok);
            }
            '"' | '\'' => {
                r.next();
                push(&mut out, quoted(&mut r, c));
            }
            '$' if !expanding => {
                r.next();
                let mut name = String::new();
                while let Some(c) = r.peek().filter(|&c| is_macro_name_char(c)) {
                    name.push(c);
                    r.next();
                }
                push(&mut out, Tok::Macro(name));
            }
            c if is_word_char(c) => {
                let mut w = String::new();
                while let Some(c) = r.peek().filter(|&c| is_word_char(c)) {
                    w.push(c);
                    r.next();
                }
                push(&mut out, Tok::Word(w));
            }
            c => {
                r.next();
                push(&mut out, Tok::Other(c));
            }
        }
    }
    // Like parse.y, a last line without a newline still ends a statement.
    if !expanding && out.last().is_some_and(|t| t.tok != Tok::Newline) {
        out.push(Token {
            tok: Tok::Newline,
            line: r.line,
        });
    }
    out.push(Token {
        tok: Tok::Eof,
        line: r.line,
    });
    out
}

/// The rest of a string opened by `quote` (already read). Escapes: `\` + the quote, `\\`,
/// `\` + newline (a continuation); any other `\` is kept. A string must end on its line.
fn quoted(r: &mut Reader<'_>, quote: char) -> Tok {
    let mut s = String::new();
    loop {
        // Escapes are looked at before the reader removes continuations, so that `\\`
        // followed by a newline is a backslash and an unterminated string.
        let c = match r.chars.peek() {
            None | Some('\n') => return Tok::Error("unterminated quoted string".into()),
            Some(&c) => c,
        };
        if c == '\\' {
            let mut ahead = r.chars.clone();
            ahead.next();
            match ahead.next() {
                Some(n) if n == quote || n == '\\' => {
                    r.chars.next();
                    r.chars.next();
                    s.push(n);
                    continue;
                }
                Some('\n') => {
                    r.chars.next();
                    r.chars.next();
                    r.newline();
                    continue;
                }
                Some('\r') if ahead.next() == Some('\n') => {
                    r.chars.next();
                    r.chars.next();
                    r.chars.next();
                    r.newline();
                    continue;
                }
                _ => {}
            }
        }
        r.chars.next();
        if c == quote {
            return Tok::Str(s);
        }
        if c == '\0' {
            return Tok::Error("NUL character in quoted string".into());
        }
        s.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<(Tok, u32)> {
        lex(s, 1, false)
            .into_iter()
            .map(|t| (t.tok, t.line))
            .collect()
    }

    fn w(s: &str) -> Tok {
        Tok::Word(s.into())
    }

    #[test]
    fn words_strings_punctuation() {
        use Tok::*;
        assert_eq!(
            toks("vm \"web 1\" {\n  memory 1G # comment\n}"),
            vec![
                (w("vm"), 1),
                (Str("web 1".into()), 1),
                (LBrace, 1),
                (Newline, 1),
                (w("memory"), 2),
                (w("1G"), 2),
                (Newline, 2),
                (RBrace, 3),
                (Newline, 3),
                (Eof, 3),
            ]
        );
        assert_eq!(
            toks("a=b,c 00:11:22:33:44:55 100.64.0.0/10 :wheel 'x'"),
            vec![
                (w("a"), 1),
                (Equals, 1),
                (w("b"), 1),
                (Comma, 1),
                (w("c"), 1),
                (w("00:11:22:33:44:55"), 1),
                (w("100.64.0.0/10"), 1),
                (w(":wheel"), 1),
                (Str("x".into()), 1),
                (Newline, 1),
                (Eof, 1),
            ]
        );
    }

    #[test]
    fn macros_and_adjacent_quotes() {
        use Tok::*;
        assert_eq!(
            toks("$dir\"/x\" a$b $"),
            vec![
                (Macro("dir".into()), 1),
                (Str("/x".into()), 1),
                (w("a$b"), 1),
                (Macro("".into()), 1),
                (Newline, 1),
                (Eof, 1),
            ]
        );
        // In a macro's value, `$` is just a character, and nothing advances the line.
        assert_eq!(
            lex("$x\ny", 7, true)
                .into_iter()
                .map(|t| (t.tok, t.line))
                .collect::<Vec<_>>(),
            vec![(w("$x"), 7), (Newline, 7), (w("y"), 7), (Eof, 7)]
        );
    }

    #[test]
    fn continuation() {
        use Tok::*;
        assert_eq!(
            toks("a \\\nb\\\r\nc\nd # x \\\n still comment\ne"),
            vec![
                (w("a"), 1),
                (w("bc"), 2),
                (Newline, 3),
                (w("d"), 4),
                (Newline, 5),
                (w("e"), 6),
                (Newline, 6),
                (Eof, 6),
            ]
        );
        assert_eq!(
            toks("\"a \\\n b\"\nc"),
            vec![
                (Str("a  b".into()), 1),
                (Newline, 2),
                (w("c"), 3),
                (Newline, 3),
                (Eof, 3),
            ]
        );
    }

    #[test]
    fn escapes_and_errors() {
        use Tok::*;
        assert_eq!(
            toks(r#""a\"b\\c\d" 'it\'s'"#),
            vec![
                (Str(r#"a"b\c\d"#.into()), 1),
                (Str("it's".into()), 1),
                (Newline, 1),
                (Eof, 1),
            ]
        );
        assert_eq!(
            toks("\"abc\nx"),
            vec![
                (Error("unterminated quoted string".into()), 1),
                (Newline, 1),
                (w("x"), 2),
                (Newline, 2),
                (Eof, 2),
            ]
        );
        assert_eq!(
            toks("( é"),
            vec![(Other('('), 1), (Other('é'), 1), (Newline, 1), (Eof, 1)]
        );
        assert_eq!(toks(""), vec![(Eof, 1)]);
        assert_eq!(toks("\n"), vec![(Newline, 1), (Eof, 2)]);
    }

    #[test]
    fn numbers() {
        assert!(is_number("0"));
        assert!(is_number("-12"));
        assert!(!is_number("-"));
        assert!(!is_number("1G"));
        assert!(!is_number(""));
    }

    #[test]
    fn keywords_sorted() {
        assert!(KEYWORDS.windows(2).all(|w| w[0] < w[1]));
    }
}
