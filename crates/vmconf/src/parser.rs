//! A recursive descent parser over the lexer's tokens, shaped like parse.y's grammar: top-level
//! statements end at a newline; inside `{ }` newlines are optional separators. Errors are
//! collected (like parse.y's `yyerror`) and parsing goes on after each, so one pass reports
//! all of them: a syntax error skips to the end of its line (or to the `}` closing the block
//! it is in), a semantic one (a bad value) skips nothing.

use std::collections::{HashMap, HashSet};
use std::mem;
use std::path::{Path, PathBuf};

use crate::fs::{names_a_directory, normalize, FileSource, InvalidUtf8};
use crate::lexer::{is_keyword, is_number, lex, Tok, Token};
use crate::size::parse_size;
use crate::types::*;
use crate::Options;

/// A syntax error was reported; the caller recovers.
struct SyntaxErr;
type PResult<T> = Result<T, SyntaxErr>;

/// The tokens of one file.
struct Stream {
    file: String,
    /// Where relative `include`s are looked for.
    dir: PathBuf,
    toks: Vec<Token>,
    pos: usize,
    /// Tokens of expanded macros, to be read before `toks[pos]`; the last one is next.
    front: Vec<Token>,
}

impl Stream {
    fn new(file: String, path: &Path, text: &str) -> Self {
        Stream {
            file,
            dir: path.parent().unwrap_or(Path::new("")).to_path_buf(),
            toks: lex(text, 1, false),
            pos: 0,
            front: Vec::new(),
        }
    }
}

struct MacroDef {
    value: String,
    /// Set with `-D`: definitions in the file do not change it.
    persist: bool,
    used: bool,
    loc: Location,
}

struct VmRecord {
    def: VmDef,
    /// The VM's own (or inherited) `grace`; None: the global one, known at the end.
    grace: Option<u64>,
}

/// An interface's `switch`, checked once every switch is known.
struct SwitchRef {
    vm: String,
    index: usize,
    switch: String,
    loc: Location,
}

/// A `vm` block being read.
struct VmBuild {
    name: String,
    loc: Location,
    parent: Option<String>,
    parent_index: Option<usize>,
    /// For an instance of a known parent: what the parent allows it to change.
    parent_allows: Option<Vec<InstanceOption>>,
    /// Changes already refused (each is reported once).
    refused: HashSet<InstanceOption>,
    enabled: Option<bool>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline: Option<String>,
    boot_device: Option<BootDevice>,
    cdrom: Option<PathBuf>,
    /// With the line of each.
    disks: Vec<(Disk, u32)>,
    interfaces: Vec<(Interface, Option<Location>)>,
    nifs: Option<usize>,
    interfaces_set: bool,
    memory: Option<u64>,
    cpus: Option<u32>,
    cpu: CpuBuild,
    owner: Option<Owner>,
    grace: Option<u64>,
    allow: Option<Vec<InstanceOption>>,
    instance_owner: Option<Owner>,
}

/// One of `cpumodel`'s parsers of a `cpu` number; Err: why the text is refused.
type NumberParser = fn(&str) -> Result<u32, String>;

/// What a vm block's `cpu` statements set (each attribute at most once, over all of them).
#[derive(Default)]
struct CpuBuild {
    vendor: Option<cpumodel::Vendor>,
    family: Option<u32>,
    model: Option<u32>,
    stepping: Option<u32>,
    hide: Option<Vec<String>>,
    /// The line of the last `cpu` statement, where a family and model that do not go
    /// together are reported.
    line: Option<u32>,
}

/// An `interface` being read, with where its `switch` was given.
struct IfBuild {
    iface: Interface,
    switch_loc: Option<Location>,
}

/// How deep `include`s may nest (the top file is at depth 0): deeper, and a chain of them
/// would be a chain of recursive calls on whatever stack the parser runs on.
pub(crate) const MAX_INCLUDE_DEPTH: usize = 16;
/// How many files `include`s may read in all, and how many bytes: a file may include
/// another many times over, and each of those include it many times again.
pub(crate) const MAX_INCLUDED_FILES: usize = 1024;
pub(crate) const MAX_INCLUDED_BYTES: usize = 16 << 20;

pub(crate) struct Parser<'a> {
    fs: &'a dyn FileSource,
    ts: Stream,
    macros: HashMap<String, MacroDef>,
    macro_order: Vec<String>,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    /// The files being read, outermost first: (canonical path, name in messages).
    includes: Vec<(PathBuf, String)>,
    /// Files read by `include`s so far, and their bytes.
    included_files: usize,
    included_bytes: usize,
    globals: Globals,
    switches: Vec<Switch>,
    switch_names: HashMap<String, Location>,
    vms: Vec<VmRecord>,
    vm_names: HashMap<String, Location>,
    switch_refs: Vec<SwitchRef>,
}

pub(crate) type Outcome = (Result<Config, Vec<Diagnostic>>, Vec<Diagnostic>);

/// Parses `text`, the contents of the file called `name`.
pub(crate) fn parse(name: &str, text: &str, opts: &Options, fs: &dyn FileSource) -> Outcome {
    let path = Path::new(name);
    let mut p = Parser {
        fs,
        ts: Stream::new(name.to_string(), path, text),
        macros: HashMap::new(),
        macro_order: Vec::new(),
        errors: Vec::new(),
        warnings: Vec::new(),
        includes: vec![(fs.canonicalize(path), name.to_string())],
        included_files: 0,
        included_bytes: 0,
        globals: Globals::default(),
        switches: Vec::new(),
        switch_names: HashMap::new(),
        vms: Vec::new(),
        vm_names: HashMap::new(),
        switch_refs: Vec::new(),
    };
    for (k, v) in &opts.macros {
        let loc = Location {
            file: "-D".into(),
            line: 0,
        };
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            p.errors.push(Diagnostic {
                file: loc.file,
                line: 0,
                message: format!("invalid macro name {k:?}"),
            });
            continue;
        }
        p.set_macro(k, v, true, loc);
    }
    p.toplevel();
    p.finish()
}

fn token_text(t: &Tok) -> String {
    match t {
        Tok::Word(w) | Tok::Str(w) => format!("syntax error near \"{w}\""),
        Tok::Macro(n) => format!("syntax error near \"${n}\""),
        Tok::LBrace => "syntax error near \"{\"".into(),
        Tok::RBrace => "syntax error near \"}\"".into(),
        Tok::Comma => "syntax error near \",\"".into(),
        Tok::Equals => "syntax error near \"=\"".into(),
        Tok::Other(c) => format!("syntax error near \"{c}\""),
        Tok::Newline => "syntax error near end of line".into(),
        Tok::Eof => "syntax error near end of file".into(),
        Tok::Error(m) => m.clone(),
    }
}

/// Linux's dev_valid_name(): what `ip link` accepts as an interface name.
fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 16
        && s != "."
        && s != ".."
        && !s
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

/// OpenBSD's rule for interface group names (ifconfig(8)).
fn valid_group(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && !s.ends_with(|c: char| c.is_ascii_digit())
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl Parser<'_> {
    // ---- diagnostics ----

    fn loc(&self, line: u32) -> Location {
        Location {
            file: self.ts.file.clone(),
            line,
        }
    }

    fn error(&mut self, line: u32, message: impl Into<String>) {
        self.errors.push(Diagnostic {
            file: self.ts.file.clone(),
            line,
            message: message.into(),
        });
    }

    /// Reports the next token as unexpected (or, if it is a lexer error, its message).
    fn syntax_error<T>(&mut self) -> PResult<T> {
        let t = self.peek();
        self.error(t.line, token_text(&t.tok));
        if matches!(t.tok, Tok::Error(_)) {
            self.advance();
        }
        Err(SyntaxErr)
    }

    /// After a syntax error: skips to the end of the line (past nested blocks), or in a
    /// block, to its closing `}` (which is left for the block to read).
    fn recover(&mut self, in_block: bool) {
        let mut depth = 0usize;
        loop {
            let t = self.raw_at(0).clone();
            match t.tok {
                Tok::Eof => return,
                Tok::Newline if depth == 0 => {
                    self.advance();
                    return;
                }
                Tok::RBrace if depth == 0 && in_block => return,
                Tok::RBrace => depth = depth.saturating_sub(1),
                Tok::LBrace => depth += 1,
                Tok::Error(m) => self.error(t.line, m),
                _ => {}
            }
            self.advance();
        }
    }

    // ---- tokens ----

    fn raw_at(&self, k: usize) -> &Token {
        let f = &self.ts.front;
        if k < f.len() {
            return &f[f.len() - 1 - k];
        }
        let i = (self.ts.pos + k - f.len()).min(self.ts.toks.len() - 1);
        &self.ts.toks[i]
    }

    fn advance(&mut self) {
        if self.ts.front.pop().is_none() && self.ts.pos + 1 < self.ts.toks.len() {
            self.ts.pos += 1;
        }
    }

    /// The next token, with macros expanded.
    fn peek(&mut self) -> Token {
        loop {
            let t = self.raw_at(0).clone();
            let Tok::Macro(name) = &t.tok else { return t };
            self.advance();
            match self.use_macro(name) {
                Some(v) => {
                    let mut toks = lex(&v, t.line, true);
                    toks.pop(); // Eof
                    toks.reverse();
                    self.ts.front.extend(toks);
                }
                None => self.ts.front.push(Token {
                    tok: Tok::Error(format!("macro '{name}' not defined")),
                    line: t.line,
                }),
            }
        }
    }

    fn peek_is(&mut self, kw: &str) -> bool {
        matches!(&self.peek().tok, Tok::Word(w) if w == kw)
    }

    fn expect(&mut self, kw: &str) -> PResult<()> {
        if self.peek_is(kw) {
            self.advance();
            Ok(())
        } else {
            self.syntax_error()
        }
    }

    /// The `{` of a `vm` or `switch` block, which may be on a line of its own (OpenBSD
    /// wants it on the line of the statement).
    fn expect_lbrace(&mut self) -> PResult<u32> {
        while self.peek().tok == Tok::Newline {
            self.advance();
        }
        let t = self.peek();
        if t.tok == Tok::LBrace {
            self.advance();
            Ok(t.line)
        } else {
            self.syntax_error()
        }
    }

    // ---- macros ----

    fn set_macro(&mut self, name: &str, value: &str, persist: bool, loc: Location) {
        if let Some(m) = self.macros.get_mut(name) {
            if m.persist {
                return;
            }
            m.value = value.to_string();
            m.used = false;
            m.loc = loc;
            return;
        }
        self.macro_order.push(name.to_string());
        self.macros.insert(
            name.to_string(),
            MacroDef {
                value: value.to_string(),
                persist,
                used: false,
                loc,
            },
        );
    }

    fn use_macro(&mut self, name: &str) -> Option<String> {
        let m = self.macros.get_mut(name)?;
        m.used = true;
        Some(m.value.clone())
    }

    /// Whether a macro used where an optional argument may be (or where an argument may go
    /// on) stands for an argument: its value starts with a name, not a keyword or `{`.
    fn macro_is_argument(&self, name: &str, allow_number: bool) -> bool {
        let Some(m) = self.macros.get(name) else {
            return false;
        };
        match &lex(&m.value, 0, true)[0].tok {
            Tok::Word(w) => !is_keyword(w) && (allow_number || !is_number(w)),
            Tok::Str(_) => true,
            _ => false,
        }
    }

    /// A macro's value as one argument: the text of its one token if it is a single word or
    /// quoted string, else the whole value as written.
    fn macro_argument(&mut self, name: &str, line: u32) -> PResult<String> {
        let Some(v) = self.use_macro(name) else {
            self.error(line, format!("macro '{name}' not defined"));
            return Err(SyntaxErr);
        };
        let toks = lex(&v, line, true);
        Ok(match toks.as_slice() {
            [Token {
                tok: Tok::Word(w) | Tok::Str(w),
                ..
            }, _] => w.clone(),
            _ => v,
        })
    }

    // ---- arguments ----

    /// A string argument: a word (not a keyword), a quoted string, a number, or a macro (its
    /// whole value). With `join`, following words, strings and macros on the line are
    /// appended, joined by `join`, as parse.y's `string` rule does ("" for paths and names).
    fn string_arg(&mut self, join: Option<&str>) -> PResult<(String, u32)> {
        let t = self.raw_at(0).clone();
        let mut s = match &t.tok {
            Tok::Word(w) if !is_keyword(w) => {
                self.advance();
                w.clone()
            }
            Tok::Str(s) => {
                self.advance();
                s.clone()
            }
            Tok::Macro(name) => {
                self.advance();
                self.macro_argument(name, t.line)?
            }
            _ => return self.syntax_error(),
        };
        let Some(sep) = join else {
            return Ok((s, t.line));
        };
        loop {
            let n = self.raw_at(0).clone();
            let piece = match &n.tok {
                Tok::Word(w) if !is_keyword(w) && !is_number(w) => w.clone(),
                Tok::Str(s) => s.clone(),
                Tok::Macro(name) if self.macro_is_argument(name, false) => {
                    self.advance();
                    s.push_str(sep);
                    let v = self.macro_argument(name, n.line)?;
                    s.push_str(&v);
                    continue;
                }
                _ => break,
            };
            self.advance();
            s.push_str(sep);
            s.push_str(&piece);
        }
        Ok((s, t.line))
    }

    /// A single-token argument.
    fn word_arg(&mut self) -> PResult<(String, u32)> {
        self.string_arg(None)
    }

    /// An argument that may be left out: taken only if the next token is a name.
    fn opt_arg(&mut self) -> PResult<Option<(String, u32)>> {
        let t = self.raw_at(0).clone();
        match &t.tok {
            Tok::Word(w) if !is_keyword(w) => {}
            Tok::Str(_) => {}
            Tok::Macro(name) if self.macro_is_argument(name, true) => {}
            _ => return Ok(None),
        }
        self.word_arg().map(Some)
    }

    /// An integer in `lo..=hi`; otherwise `invalid WHAT: TEXT (HINT)` is reported and None
    /// returned.
    fn int_arg(&mut self, what: &str, lo: i64, hi: i64, hint: &str) -> PResult<Option<i64>> {
        let (text, line) = self.word_arg()?;
        let v = is_number(&text)
            .then(|| text.parse::<i64>().ok())
            .flatten()
            .filter(|v| (lo..=hi).contains(v));
        if v.is_none() {
            let hint = if hint.is_empty() {
                String::new()
            } else {
                format!(" ({hint})")
            };
            self.error(line, format!("invalid {what}: {text}{hint}"));
        }
        Ok(v)
    }

    // ---- top level ----

    fn toplevel(&mut self) {
        loop {
            let t = self.peek();
            match t.tok {
                Tok::Eof => return,
                Tok::Newline => {
                    self.advance();
                    continue;
                }
                _ => {}
            }
            if self.statement().is_err() {
                self.recover(false);
                continue;
            }
            match self.peek().tok {
                Tok::Newline => self.advance(),
                Tok::Eof => {}
                _ => {
                    let _: PResult<()> = self.syntax_error();
                    self.recover(false);
                }
            }
        }
    }

    fn statement(&mut self) -> PResult<()> {
        let t = self.peek();
        let Tok::Word(w) = &t.tok else {
            return self.syntax_error();
        };
        if self.raw_at(1).tok == Tok::Equals {
            return self.macro_definition(w, t.line);
        }
        match w.as_str() {
            "include" => self.include_statement(),
            "local" => self.local_statement(),
            "socket" => {
                self.advance();
                self.expect("owner")?;
                let (s, line) = self.word_arg()?;
                match s.parse::<Owner>() {
                    Ok(o) => self.globals.socket_owner = Some(o),
                    Err(e) => self.error(line, e),
                }
                Ok(())
            }
            "staggered" => {
                self.advance();
                self.expect("start")?;
                self.expect("parallel")?;
                let n = self.int_arg("parallelism", 1, u32::MAX.into(), "")?;
                self.expect("delay")?;
                let d = self.int_arg("delay", 0, i64::MAX, "")?;
                if let (Some(n), Some(d)) = (n, d) {
                    self.globals.staggered = Staggered {
                        parallel: Some(n as u32),
                        delay_secs: d as u64,
                    };
                }
                Ok(())
            }
            "grace" => {
                self.advance();
                if let Some(g) = self.int_arg("grace period", 0, i64::MAX, "")? {
                    self.globals.grace_secs = g as u64;
                }
                Ok(())
            }
            "switch" => self.switch_statement(),
            "vm" => self.vm_statement(),
            _ => self.syntax_error(),
        }
    }

    fn macro_definition(&mut self, name: &str, line: u32) -> PResult<()> {
        self.advance(); // name
        self.advance(); // =
        let t = self.raw_at(0).clone();
        let value = match &t.tok {
            Tok::Word(w) | Tok::Str(w) => {
                self.advance();
                w.clone()
            }
            Tok::Macro(m) => {
                self.advance();
                match self.use_macro(m) {
                    Some(v) => v,
                    None => {
                        self.error(t.line, format!("macro '{m}' not defined"));
                        return Err(SyntaxErr);
                    }
                }
            }
            _ => return self.syntax_error(),
        };
        if is_keyword(name) {
            self.error(line, format!("macro name \"{name}\" is a reserved word"));
        } else if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            self.error(line, format!("invalid macro name \"{name}\""));
        } else {
            let loc = self.loc(line);
            self.set_macro(name, &value, false, loc);
        }
        Ok(())
    }

    fn include_statement(&mut self) -> PResult<()> {
        self.advance();
        let (path, line) = self.string_arg(Some(""))?;
        if !matches!(self.peek().tok, Tok::Newline | Tok::Eof) {
            return self.syntax_error();
        }
        if path.is_empty() {
            self.error(line, "include: empty path");
            return Ok(());
        }
        let p = PathBuf::from(&path);
        let full = if p.is_relative() {
            self.ts.dir.join(p)
        } else {
            p
        };
        let mut display = normalize(&full).display().to_string();
        // normalize() drops a trailing "/" or "/.": keep it, so that the message
        // ("Not a directory") names the path that was asked for.
        if names_a_directory(&full) && !display.ends_with('/') {
            display.push('/');
        }
        let canon = self.fs.canonicalize(&full);
        if let Some(i) = self.includes.iter().position(|(c, _)| *c == canon) {
            let mut chain: Vec<&str> = self.includes[i..].iter().map(|(_, d)| d.as_str()).collect();
            chain.push(&display);
            let msg = format!("include loop: {}", chain.join(" -> "));
            self.error(line, msg);
            return Ok(());
        }
        if self.includes.len() > MAX_INCLUDE_DEPTH {
            let msg = format!("includes nested too deeply (more than {MAX_INCLUDE_DEPTH} levels)");
            self.error(line, msg);
            return Ok(());
        }
        if self.included_files >= MAX_INCLUDED_FILES {
            let msg = format!("more than {MAX_INCLUDED_FILES} files included in all");
            self.error(line, msg);
            return Ok(());
        }
        self.included_files += 1;
        match self.fs.read_to_string(&full) {
            Err(e) => match e.get_ref().and_then(|i| i.downcast_ref::<InvalidUtf8>()) {
                Some(bad) => self.errors.push(Diagnostic {
                    file: display,
                    line: bad.line,
                    message: "invalid UTF-8".into(),
                }),
                None => self.error(line, format!("failed to include file \"{display}\": {e}")),
            },
            Ok(text) if self.included_bytes + text.len() > MAX_INCLUDED_BYTES => {
                let msg = format!(
                    "failed to include file \"{display}\": more than {} MiB included in all",
                    MAX_INCLUDED_BYTES >> 20
                );
                self.error(line, msg);
            }
            Ok(text) => {
                self.included_bytes += text.len();
                let saved = mem::replace(&mut self.ts, Stream::new(display.clone(), &full, &text));
                self.includes.push((canon, display));
                self.toplevel();
                self.includes.pop();
                self.ts = saved;
            }
        }
        Ok(())
    }

    fn local_statement(&mut self) -> PResult<()> {
        self.advance();
        if self.peek_is("prefix") {
            self.advance();
            let (s, line) = self.word_arg()?;
            match s.parse::<Ipv4Prefix>() {
                Ok(p) => self.globals.local_prefix = p,
                Err(_) => self.error(line, format!("invalid local prefix: {s}")),
            }
        } else if self.peek_is("inet6") {
            self.advance();
            self.globals.local_inet6 = true;
            if self.peek_is("prefix") {
                self.advance();
                let (s, line) = self.word_arg()?;
                match s.parse::<Ipv6Prefix>() {
                    Ok(p) if p.len <= 64 => self.globals.local_prefix6 = p,
                    _ => self.error(line, format!("invalid local inet6 prefix: {s}")),
                }
            }
        } else {
            return self.syntax_error();
        }
        Ok(())
    }

    /// Reads the options of a block whose `{` has been read, up to its `}`.
    fn block<B>(
        &mut self,
        b: &mut B,
        what: &str,
        open_line: u32,
        commas: bool,
        option: fn(&mut Self, &mut B, Token) -> PResult<()>,
    ) {
        loop {
            let t = self.peek();
            match t.tok {
                Tok::Newline => self.advance(),
                Tok::Comma if commas => self.advance(),
                Tok::RBrace => {
                    self.advance();
                    return;
                }
                Tok::Eof => {
                    self.error(
                        t.line,
                        format!(
                            "unexpected end of file: missing \"}}\" for {what} at line {open_line}"
                        ),
                    );
                    return;
                }
                _ => {
                    if option(self, b, t).is_err() {
                        self.recover(true);
                    }
                }
            }
        }
    }

    // ---- switch ----

    fn switch_statement(&mut self) -> PResult<()> {
        let line = self.peek().line;
        self.advance();
        let (name, _) = self.string_arg(Some(""))?;
        let open = self.expect_lbrace()?;
        let mut sw = Switch {
            name: name.clone(),
            line: self.loc(line),
            enabled: true,
            interface: String::new(),
            group: None,
            locked: false,
            rdomain: None,
            up: true,
        };
        if name.is_empty() || name.chars().any(char::is_control) {
            self.error(line, format!("invalid switch name {name:?}"));
        }
        let dup = self.switch_names.get(&name).cloned();
        if let Some(first) = &dup {
            self.error(
                line,
                format!("switch {name:?} defined twice (first defined at {first})"),
            );
        }
        self.block(
            &mut sw,
            &format!("switch {name:?}"),
            open,
            false,
            Self::switch_option,
        );
        if sw.interface.is_empty() {
            self.error(line, format!("switch {name:?} is missing interface name"));
        }
        if dup.is_none() {
            self.switch_names.insert(name, sw.line.clone());
            self.switches.push(sw);
        }
        Ok(())
    }

    fn switch_option(&mut self, sw: &mut Switch, t: Token) -> PResult<()> {
        let Tok::Word(w) = &t.tok else {
            return self.syntax_error();
        };
        match w.as_str() {
            "enable" | "disable" => {
                self.advance();
                sw.enabled = w == "enable";
            }
            "up" | "down" => {
                self.advance();
                sw.up = w == "up";
            }
            "group" => {
                self.advance();
                let (g, line) = self.string_arg(Some(""))?;
                if valid_group(&g) {
                    sw.group = Some(g);
                } else {
                    self.error(line, format!("invalid group name: {g}"));
                }
            }
            "interface" => {
                self.advance();
                let (i, line) = self.string_arg(Some(""))?;
                if !valid_ifname(&i) {
                    self.error(line, format!("invalid switch interface: {i}"));
                }
                sw.interface = i;
            }
            "locked" => {
                self.advance();
                self.expect("lladdr")?;
                sw.locked = true;
            }
            "rdomain" => {
                self.advance();
                let max = MAX_RDOMAIN.into();
                if let Some(r) = self.int_arg("rdomain", 0, max, "must be 0 to 255")? {
                    sw.rdomain = Some(r as u32);
                }
            }
            _ => return self.syntax_error(),
        }
        Ok(())
    }

    // ---- vm ----

    fn vm_statement(&mut self) -> PResult<()> {
        let line = self.peek().line;
        self.advance();
        let (first, _) = self.string_arg(Some(""))?;
        let (name, parent) = if self.peek_is("instance") {
            self.advance();
            (self.string_arg(Some(""))?.0, Some(first))
        } else {
            (first, None)
        };
        let open = self.expect_lbrace()?;

        if let Err(why) = crate::check_vm_name(&name) {
            self.error(line, format!("invalid vm name {name:?}: {why}"));
        }
        let dup = self.vm_names.get(&name).cloned();
        if let Some(first) = &dup {
            self.error(
                line,
                format!("vm {name:?} defined twice (first defined at {first})"),
            );
        }
        let mut b = VmBuild {
            name: name.clone(),
            loc: self.loc(line),
            parent: parent.clone(),
            parent_index: None,
            parent_allows: None,
            refused: HashSet::new(),
            enabled: None,
            kernel: None,
            initrd: None,
            cmdline: None,
            boot_device: None,
            cdrom: None,
            disks: Vec::new(),
            interfaces: Vec::new(),
            nifs: None,
            interfaces_set: false,
            memory: None,
            cpus: None,
            cpu: CpuBuild::default(),
            owner: None,
            grace: None,
            allow: None,
            instance_owner: None,
        };
        if let Some(p) = &parent {
            match self.vms.iter().position(|r| r.def.name == *p) {
                None => self.error(line, format!("vm {name}: parent vm {p:?} not defined")),
                Some(i) => {
                    let pd = &self.vms[i].def;
                    let refused = pd.instance_of.is_some() && !pd.allows(InstanceOption::Instance);
                    b.parent_index = Some(i);
                    b.parent_allows = Some(pd.allow_instance.clone());
                    if refused {
                        self.error(
                            line,
                            format!(
                                "vm {name}: parent {p:?} is an instance and does not allow instance"
                            ),
                        );
                    }
                }
            }
        }

        self.block(
            &mut b,
            &format!("vm {name:?}"),
            open,
            false,
            Self::vm_option,
        );

        let rec = self.finish_vm(b);
        if dup.is_none() {
            self.vm_names.insert(name, rec.def.line.clone());
            self.vms.push(rec);
        }
        Ok(())
    }

    /// Notes that an instance changes `opt`, which its parent may not allow.
    fn instance_change(&mut self, b: &mut VmBuild, opt: InstanceOption, line: u32) {
        if let Some(allowed) = &b.parent_allows {
            if !allowed.contains(&opt) && b.refused.insert(opt) {
                self.error(
                    line,
                    format!("vm {}: instance may not change {opt}", b.name),
                );
            }
        }
    }

    fn once(&mut self, set: bool, what: &str, line: u32) {
        if set {
            self.error(line, format!("{what} specified more than once"));
        }
    }

    fn vm_option(&mut self, b: &mut VmBuild, t: Token) -> PResult<()> {
        let Tok::Word(w) = &t.tok else {
            return self.syntax_error();
        };
        let line = t.line;
        match w.as_str() {
            "enable" | "disable" => {
                self.advance();
                self.instance_change(b, InstanceOption::Disable, line);
                b.enabled = Some(w == "enable");
            }
            "boot" if matches!(&self.raw_at(1).tok, Tok::Word(d) if d == "device") => {
                self.advance();
                self.advance();
                self.instance_change(b, InstanceOption::Boot, line);
                let dev = match &self.peek().tok {
                    Tok::Word(d) if d == "disk" => BootDevice::Disk,
                    Tok::Word(d) if d == "cdrom" => BootDevice::Cdrom,
                    Tok::Word(d) if d == "net" => BootDevice::Net,
                    _ => return self.syntax_error(),
                };
                self.advance();
                self.once(b.boot_device.is_some(), "boot device", line);
                b.boot_device = Some(dev);
            }
            "boot" | "kernel" => {
                self.advance();
                self.instance_change(b, InstanceOption::Boot, line);
                let p = self.path_arg()?;
                self.once(b.kernel.is_some(), "kernel", line);
                b.kernel = p;
            }
            "initrd" => {
                self.advance();
                self.instance_change(b, InstanceOption::Boot, line);
                let p = self.path_arg()?;
                self.once(b.initrd.is_some(), "initrd", line);
                b.initrd = p;
            }
            "cmdline" => {
                self.advance();
                self.instance_change(b, InstanceOption::Boot, line);
                let (s, _) = self.string_arg(Some(" "))?;
                self.once(b.cmdline.is_some(), "cmdline", line);
                b.cmdline = Some(s);
            }
            "cpus" => {
                self.advance();
                self.instance_change(b, InstanceOption::Cpus, line);
                let n = self.int_arg("cpus", 1, MAX_CPUS.into(), "must be 1 to 254")?;
                self.once(b.cpus.is_some(), "cpus", line);
                b.cpus = n.map(|n| n as u32).or(b.cpus);
            }
            "cpu" => {
                self.advance();
                // The CPU model suits the kernel: who may choose what boots may choose it.
                self.instance_change(b, InstanceOption::Boot, line);
                b.cpu.line = Some(line);
                self.cpu_statement(&mut b.cpu)?;
            }
            "cdrom" => {
                self.advance();
                self.instance_change(b, InstanceOption::Cdrom, line);
                let p = self.path_arg()?;
                self.once(b.cdrom.is_some(), "cdrom", line);
                b.cdrom = p;
            }
            "disk" => {
                self.advance();
                self.instance_change(b, InstanceOption::Disk, line);
                let path = self.path_arg()?;
                let mut format = None;
                if self.peek_is("format") {
                    self.advance();
                    let (f, fline) = self.string_arg(Some(""))?;
                    match f.parse::<DiskFormat>() {
                        Ok(f) => format = Some(f),
                        Err(e) => self.error(fline, e),
                    }
                }
                if b.disks.len() >= MAX_DISKS {
                    let n = b.disks.len() + 1;
                    self.error(line, format!("too many disks: {n} (max {MAX_DISKS})"));
                } else if let Some(path) = path {
                    b.disks.push((Disk { path, format }, line));
                }
            }
            "local" => {
                self.advance();
                if !self.peek_is("interface") {
                    return self.syntax_error();
                }
                self.interface(b, true, line)?;
            }
            "interface" => self.interface(b, false, line)?,
            "interfaces" => {
                self.advance();
                self.instance_change(b, InstanceOption::Interface, line);
                let (s, nline) = self.word_arg()?;
                self.once(b.nifs.is_some(), "interfaces", line);
                match s.parse::<usize>() {
                    Ok(n) if is_number(&s) && n <= MAX_INTERFACES => {
                        b.nifs = Some(n);
                        b.interfaces_set = true;
                    }
                    Ok(_) if is_number(&s) => self.error(
                        nline,
                        format!("too many interfaces: {s} (max {MAX_INTERFACES})"),
                    ),
                    _ => self.error(nline, format!("invalid interfaces: {s}")),
                }
            }
            "memory" => {
                self.advance();
                self.instance_change(b, InstanceOption::Memory, line);
                let (s, mline) = self.word_arg()?;
                self.once(b.memory.is_some(), "memory", line);
                match parse_size(&s) {
                    Ok(m) => b.memory = Some(m),
                    Err(e) => self.error(mline, e),
                }
            }
            "owner" => {
                self.advance();
                self.instance_change(b, InstanceOption::Owner, line);
                let (s, oline) = self.word_arg()?;
                match s.parse::<Owner>() {
                    Ok(o) => b.owner = Some(o),
                    Err(e) => self.error(oline, e),
                }
            }
            "grace" => {
                self.advance();
                let g = self.int_arg("grace period", 0, i64::MAX, "")?;
                self.once(b.grace.is_some(), "grace", line);
                b.grace = g.map(|g| g as u64).or(b.grace);
            }
            "allow" => {
                self.advance();
                self.expect("instance")?;
                self.instance_change(b, InstanceOption::Instance, line);
                b.allow.get_or_insert_with(Vec::new);
                let t = self.peek();
                if t.tok == Tok::LBrace {
                    self.advance();
                    self.block(b, "allow instance", t.line, true, Self::allow_item);
                } else {
                    self.allow_item(b, t)?;
                }
            }
            "sev" | "seves" => {
                self.advance();
                self.error(line, format!("{w} is not supported on Linux"));
            }
            _ => return self.syntax_error(),
        }
        Ok(())
    }

    /// The attributes of a `cpu` statement (read): `vendor V`, `family N`, `model N`,
    /// `stepping N`, `hide NAME` or `hide { NAME ... }`, at least one, in any order.
    fn cpu_statement(&mut self, c: &mut CpuBuild) -> PResult<()> {
        let mut any = false;
        loop {
            let t = self.peek();
            let attr = match &t.tok {
                Tok::Word(w)
                    if matches!(
                        w.as_str(),
                        "vendor" | "family" | "model" | "stepping" | "hide"
                    ) =>
                {
                    w.clone()
                }
                _ if any => return Ok(()),
                _ => return self.syntax_error(),
            };
            any = true;
            self.advance();
            let what = format!("cpu {attr}");
            match attr.as_str() {
                "vendor" => {
                    let (s, vline) = self.word_arg()?;
                    self.once(c.vendor.is_some(), &what, t.line);
                    match cpumodel::parse_vendor(&s) {
                        Ok(v) => c.vendor = Some(v),
                        Err(e) => self.error(vline, format!("invalid cpu vendor: {s:?} ({e})")),
                    }
                }
                "hide" => {
                    let mut names = Vec::new();
                    let o = self.peek();
                    if o.tok == Tok::LBrace {
                        self.advance();
                        self.block(&mut names, "cpu hide", o.line, true, Self::cpu_feature);
                    } else {
                        self.cpu_feature(&mut names, o)?;
                    }
                    self.once(c.hide.is_some(), &what, t.line);
                    c.hide = Some(names);
                }
                _ => {
                    let (s, nline) = self.word_arg()?;
                    let (slot, parse): (_, NumberParser) = match attr.as_str() {
                        "family" => (&mut c.family, cpumodel::parse_family),
                        "model" => (&mut c.model, cpumodel::parse_model),
                        _ => (&mut c.stepping, cpumodel::parse_stepping),
                    };
                    let set = slot.is_some();
                    let parsed = parse(&s);
                    if let Ok(n) = parsed {
                        *slot = Some(n);
                    }
                    self.once(set, &what, t.line);
                    if let Err(e) = parsed {
                        self.error(nline, format!("invalid {what}: {s} ({e})"));
                    }
                }
            }
        }
    }

    /// One name of a `cpu hide` list: a feature the `vm` crate can hide. The names come
    /// from `cpumodel`, the table `vm` hides them with, so the two cannot disagree.
    fn cpu_feature(&mut self, names: &mut Vec<String>, _t: Token) -> PResult<()> {
        let (name, line) = self.word_arg()?;
        if cpumodel::feature(&name).is_none() {
            self.error(line, format!("unknown cpu feature: {name}"));
        } else if !names.contains(&name) {
            names.push(name);
        }
        Ok(())
    }

    /// A file name (concatenated like parse.y's `string`); None if it was empty (reported).
    fn path_arg(&mut self) -> PResult<Option<PathBuf>> {
        let (s, line) = self.string_arg(Some(""))?;
        if s.is_empty() {
            self.error(line, "empty path");
            return Ok(None);
        }
        Ok(Some(PathBuf::from(s)))
    }

    fn allow_item(&mut self, b: &mut VmBuild, t: Token) -> PResult<()> {
        let opt = match &t.tok {
            Tok::Word(w) => InstanceOption::from_keyword(w),
            _ => None,
        };
        let Some(opt) = opt else {
            return self.syntax_error();
        };
        self.advance();
        if opt == InstanceOption::Owner {
            if let Some((s, line)) = self.opt_arg()? {
                match s.parse::<Owner>() {
                    Ok(o) => b.instance_owner = Some(o),
                    Err(e) => self.error(line, e),
                }
            }
        }
        let allow = b.allow.get_or_insert_with(Vec::new);
        if !allow.contains(&opt) {
            allow.push(opt);
        }
        Ok(())
    }

    /// `[local] interface [NAME] [{ OPTIONS }]` or `... interface [NAME] OPTIONS` (on one
    /// line, optionally separated by commas). The next token is `interface`.
    fn interface(&mut self, b: &mut VmBuild, local: bool, line: u32) -> PResult<()> {
        self.advance();
        self.instance_change(b, InstanceOption::Interface, line);
        let mut ib = IfBuild {
            iface: Interface {
                local,
                ..Interface::default()
            },
            switch_loc: None,
        };
        if let Some((name, nline)) = self.opt_arg()? {
            if !valid_ifname(&name) {
                self.error(nline, format!("invalid interface name: {name}"));
            } else if name != "tap" {
                ib.iface.name = Some(name);
            }
        }
        let t = self.peek();
        if t.tok == Tok::LBrace {
            self.advance();
            self.block(&mut ib, "interface", t.line, true, Self::iface_option);
        } else {
            loop {
                let t = self.peek();
                let is_opt = matches!(&t.tok, Tok::Word(w) if matches!(w.as_str(),
                    "switch" | "group" | "locked" | "lladdr" | "rdomain" | "up" | "down"));
                if !is_opt {
                    break;
                }
                self.iface_option(&mut ib, t)?;
                if self.peek().tok == Tok::Comma {
                    self.advance();
                }
            }
        }
        b.interfaces_set = true;
        if b.interfaces.len() >= MAX_INTERFACES {
            let n = b.interfaces.len() + 1;
            self.error(
                line,
                format!("too many interfaces: {n} (max {MAX_INTERFACES})"),
            );
        } else {
            b.interfaces.push((ib.iface, ib.switch_loc));
        }
        Ok(())
    }

    fn iface_option(&mut self, ib: &mut IfBuild, t: Token) -> PResult<()> {
        let Tok::Word(w) = &t.tok else {
            return self.syntax_error();
        };
        match w.as_str() {
            "switch" => {
                self.advance();
                let (s, line) = self.string_arg(Some(""))?;
                ib.switch_loc = Some(self.loc(line));
                ib.iface.switch = Some(s);
            }
            "group" => {
                self.advance();
                let (g, line) = self.string_arg(Some(""))?;
                if valid_group(&g) {
                    ib.iface.group = Some(g);
                } else {
                    self.error(line, format!("invalid group name: {g}"));
                }
            }
            "locked" | "lladdr" => {
                self.advance();
                if w == "locked" {
                    self.expect("lladdr")?;
                    ib.iface.locked = true;
                }
                if let Some((a, line)) = self.opt_arg()? {
                    match parse_lladdr(&a) {
                        Ok(mac) => ib.iface.lladdr = Some(mac),
                        Err(e) => self.error(line, e),
                    }
                }
            }
            "rdomain" => {
                self.advance();
                let max = MAX_RDOMAIN.into();
                if let Some(r) = self.int_arg("rdomain", 0, max, "must be 0 to 255")? {
                    ib.iface.rdomain = Some(r as u32);
                }
            }
            "up" | "down" => {
                self.advance();
                ib.iface.up = w == "up";
            }
            _ => return self.syntax_error(),
        }
        Ok(())
    }

    /// The VM a block describes: defaults (or, for an instance, the parent's settings less
    /// its disks and interface names and addresses), then what the block set.
    fn finish_vm(&mut self, b: VmBuild) -> VmRecord {
        let mut parent_disks = Vec::new();
        let (mut def, mut grace) = match b.parent_index {
            Some(i) => {
                let p = &self.vms[i];
                let mut d = p.def.clone();
                parent_disks = mem::take(&mut d.disks);
                for i in &mut d.interfaces {
                    i.name = None;
                    i.lladdr = None;
                }
                (d, p.grace)
            }
            None => (VmDef::new(""), None),
        };
        def.name = b.name.clone();
        def.line = b.loc.clone();
        if b.parent.is_some() {
            def.instance_of = b.parent.clone();
        }
        if let Some(e) = b.enabled {
            def.enabled = e;
        }
        if b.kernel.is_some() {
            def.kernel = b.kernel;
        }
        if b.initrd.is_some() {
            def.initrd = b.initrd;
        }
        if b.cmdline.is_some() {
            def.cmdline = b.cmdline;
        }
        if b.boot_device.is_some() {
            def.boot_device = b.boot_device;
        }
        if b.cdrom.is_some() {
            def.cdrom = b.cdrom;
        }
        for (disk, line) in b.disks {
            // An instance gets disks of its own: sharing would corrupt them (OpenBSD's rule).
            if parent_disks.iter().any(|d| d.path == disk.path) {
                let msg = format!(
                    "vm {}: instance may not reuse disk {:?} of vm {}",
                    b.name,
                    disk.path.display().to_string(),
                    b.parent.as_deref().unwrap_or_default()
                );
                self.error(line, msg);
            }
            def.disks.push(disk);
        }
        if b.interfaces_set {
            def.interfaces.clear();
            for (index, (iface, loc)) in b.interfaces.into_iter().enumerate() {
                if let (Some(switch), Some(loc)) = (&iface.switch, loc) {
                    self.switch_refs.push(SwitchRef {
                        vm: b.name.clone(),
                        index,
                        switch: switch.clone(),
                        loc,
                    });
                }
                def.interfaces.push(iface);
            }
            let n = b.nifs.unwrap_or(0);
            if def.interfaces.len() < n {
                def.interfaces.resize(n, Interface::default());
            }
        }
        if let Some(m) = b.memory {
            def.memory = m;
        }
        if let Some(c) = b.cpus {
            def.cpus = c;
        }
        // Each attribute on its own: an instance allowed to may change one and inherit the rest.
        let cpu = b.cpu;
        if let Some(v) = cpu.vendor {
            def.cpu.vendor = Some(cpumodel::vendor_str(&v));
        }
        if cpu.family.is_some() {
            def.cpu.family = cpu.family;
        }
        if cpu.model.is_some() {
            def.cpu.model = cpu.model;
        }
        if cpu.stepping.is_some() {
            def.cpu.stepping = cpu.stepping;
        }
        if let Some(h) = cpu.hide {
            def.cpu.hide = h;
        }
        // A family and model the guest could not read together. The vendor may be the
        // host's, unknown here: then vmm checks again when it starts the VM.
        if let (Some(line), Some(family), Some(model)) = (cpu.line, def.cpu.family, def.cpu.model) {
            let vendor = def
                .cpu
                .vendor
                .as_deref()
                .and_then(|v| cpumodel::parse_vendor(v).ok());
            if let Err(e) = cpumodel::check_signature(vendor.as_ref(), family, model) {
                self.error(line, format!("vm {}: {e}", def.name));
            }
        }
        if b.owner.is_some() {
            def.owner = b.owner;
        }
        if b.grace.is_some() {
            grace = b.grace;
        }
        if let Some(mut a) = b.allow {
            a.sort();
            def.allow_instance = a;
        }
        if b.instance_owner.is_some() {
            def.instance_owner = b.instance_owner;
        }
        if def.kernel.is_none() {
            let line = b.loc.line;
            if def.initrd.is_some() {
                self.error(line, format!("vm {}: initrd without kernel", def.name));
            }
            if def.cmdline.is_some() {
                self.error(line, format!("vm {}: cmdline without kernel", def.name));
            }
        }
        VmRecord { def, grace }
    }

    fn finish(mut self) -> Outcome {
        for r in &self.switch_refs {
            if !self.switch_names.contains_key(&r.switch) {
                self.errors.push(Diagnostic {
                    file: r.loc.file.clone(),
                    line: r.loc.line,
                    message: format!(
                        "vm {}: interface {}: unknown switch {:?}",
                        r.vm, r.index, r.switch
                    ),
                });
            }
        }
        for name in &self.macro_order {
            let m = &self.macros[name];
            if !m.used {
                self.warnings.push(Diagnostic {
                    file: m.loc.file.clone(),
                    line: m.loc.line,
                    message: format!("macro '{name}' not used"),
                });
            }
        }
        if !self.errors.is_empty() {
            return (Err(self.errors), self.warnings);
        }
        let grace = self.globals.grace_secs;
        let vms = self
            .vms
            .into_iter()
            .map(|r| VmDef {
                grace_secs: r.grace.unwrap_or(grace),
                ..r.def
            })
            .collect();
        let config = Config {
            globals: self.globals,
            switches: self.switches,
            vms,
        };
        (Ok(config), self.warnings)
    }
}
