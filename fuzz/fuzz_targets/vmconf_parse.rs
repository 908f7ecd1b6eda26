//! vm.conf's parser (`vmconf`) on any bytes, entered as vmd enters it
//! (`parse_file_with_warnings`, which `vmd -n`, start-up, reload and
//! `vmctl load` all go through).
//!
//! An input is a flags byte, then up to five parts split at 0xff (a byte
//! UTF-8 never has, so the parts themselves may be any text, or not UTF-8
//! at all): the main file `ROOT/vm.conf`, then `ROOT/a.conf`,
//! `ROOT/d/b.conf` and `ROOT/d/c.conf` for its `include`s (a part left
//! out is a file that does not exist), then, with flag 1, `-D name=value`
//! definitions, one a line. The dictionary (`fuzz/dicts/vmconf.dict`)
//! gives the fuzzer the grammar's words and these file names.
//!
//! Each input is parsed from memory (`MemFiles`) where every part is
//! UTF-8, and from a real directory (`StdFs`, ROOT a temporary directory of
//! this process) with flag 2 or where a part is not UTF-8. The directory
//! also holds what a careless include could name: a FIFO, a socket, a
//! directory, a symlink to /dev/zero, a file over the size limit and a
//! symlink back to vm.conf. Reads are confined to ROOT: any other path is
//! "No such file or directory", as in memory.
//!
//! Checked, besides no panic and no hang (libFuzzer's `-timeout`; the
//! parser bounds include depth, files and bytes):
//! - every diagnostic (error or warning) names a file that was read (or
//!   `-D`) and a line of it: 1 to the file's last line (0 for `-D`); its
//!   text `file:line: message` is one line with no control character nor
//!   one that reorders or hides text (no newline, CR or escape sequence
//!   reaches `vmd -n`'s terminal or vmd's log);
//! - an invalid UTF-8 file is reported at the line of its first bad byte;
//! - memory and the real directory agree: both succeed with the same
//!   configuration and warnings, or both fail with errors at the same
//!   places (the same messages, but for why a file could not be read);
//! - a configuration that parses goes through JSON (the control API's
//!   format) unchanged; and, printed back as vm.conf text (every VM as a
//!   plain `vm` block with its settings resolved, every value quoted), it
//!   parses again, without a warning, to the same configuration.

#![no_main]

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmconf::{
    format_lladdr, format_size, normalize, Config, Diagnostic, FileSource, MemFiles, Options,
    StdFs, VmDef,
};

/// The included files a part may be, relative to ROOT, in order.
const INCLUDES: [&str; 3] = ["a.conf", "d/b.conf", "d/c.conf"];
const SEP: u8 = 0xff;
/// The largest file `StdFs` reads (vmconf's `fs::MAX_FILE_SIZE`).
const MAX_FILE_SIZE: usize = 1 << 20;

/// This process's directory (canonical, so that paths in messages are as
/// the parser makes them), with its fixtures; made once.
fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let tmp = std::env::temp_dir();
        // Those of earlier runs whose process is gone.
        if let Ok(dir) = std::fs::read_dir(&tmp) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("vmconf-fuzz-") {
                    if !Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let dir = tmp.join(format!("vmconf-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("d")).expect("make the fuzz directory");
        let dir = std::fs::canonicalize(&dir).expect("canonical directory");
        std::fs::create_dir(dir.join("dir")).expect("dir");
        let fifo = std::process::Command::new("mkfifo")
            .arg(dir.join("fifo"))
            .status();
        assert!(fifo.is_ok_and(|s| s.success()), "mkfifo");
        drop(std::os::unix::net::UnixListener::bind(dir.join("sock")).expect("socket"));
        std::os::unix::fs::symlink("/dev/zero", dir.join("zero")).expect("symlink");
        std::os::unix::fs::symlink("vm.conf", dir.join("self")).expect("symlink");
        let big = vec![b'#'; MAX_FILE_SIZE + 1];
        std::fs::write(dir.join("big"), big).expect("big file");
        dir
    })
}

/// The real file system, confined to ROOT: a path outside it is not
/// there, exactly as in `MemFiles`.
struct Confined;

impl Confined {
    fn inside(path: &Path) -> bool {
        normalize(path).starts_with(root())
    }
}

impl FileSource for Confined {
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        if Self::inside(path) {
            StdFs.read_to_string(path)
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                "No such file or directory",
            ))
        }
    }

    fn canonicalize(&self, path: &Path) -> PathBuf {
        if Self::inside(path) {
            StdFs.canonicalize(path)
        } else {
            normalize(path)
        }
    }
}

/// One file of the input: its path and bytes.
struct File<'a> {
    path: PathBuf,
    bytes: &'a [u8],
}

type Outcome = (Result<Config, Vec<Diagnostic>>, Vec<Diagnostic>);

/// What may not reach a terminal raw: control characters, and those that
/// reorder or hide text (as `api::text` and vmconf's Diagnostic see them).
fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
        )
}

/// The checks every diagnostic gets.
fn check_diagnostics(out: &Outcome, files: &[File], how: &str) {
    let errors = out.0.as_ref().err().map(Vec::as_slice).unwrap_or_default();
    for d in errors.iter().chain(&out.1) {
        let text = d.to_string();
        assert!(
            !text.chars().any(unprintable),
            "{how}: a diagnostic with a control character: {text:?}"
        );
        if d.file == "-D" {
            assert_eq!(d.line, 0, "{how}: a -D diagnostic at a line: {text:?}");
            continue;
        }
        let Some(f) = files.iter().find(|f| f.path == Path::new(&d.file)) else {
            panic!("{how}: a diagnostic names a file that was not read: {text:?}");
        };
        let lines = 1 + f.bytes.iter().filter(|&&b| b == b'\n').count();
        assert!(
            d.line >= 1 && d.line as usize <= lines,
            "{how}: line {} of a {lines}-line file: {text:?}",
            d.line
        );
        if d.message == "invalid UTF-8" {
            let good = std::str::from_utf8(f.bytes)
                .err()
                .map(|e| e.valid_up_to())
                .unwrap_or_else(|| panic!("{how}: {text:?}, but the file is UTF-8"));
            let line = 1 + f.bytes[..good].iter().filter(|&&b| b == b'\n').count();
            assert_eq!(d.line as usize, line, "{how}: {text:?}");
        }
    }
}

/// Whether `m` is about why a file could not be read, which memory and
/// the real directory say differently (a FIFO there is no file here).
fn about_reading(m: &str) -> bool {
    m.starts_with("failed to include file") || m.starts_with("include loop:")
}

fn compare(mem: &Outcome, disk: &Outcome) {
    match (&mem.0, &disk.0) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "memory and disk: different configurations");
            assert_eq!(mem.1, disk.1, "memory and disk: different warnings");
        }
        (Err(a), Err(b)) => {
            let places = |v: &[Diagnostic]| -> Vec<(String, u32)> {
                v.iter().map(|d| (d.file.clone(), d.line)).collect()
            };
            assert_eq!(places(a), places(b), "memory {a:#?}\ndisk {b:#?}");
            for (x, y) in a.iter().zip(b) {
                if !about_reading(&x.message) && !about_reading(&y.message) {
                    assert_eq!(x.message, y.message);
                }
            }
        }
        (a, b) => panic!("memory and disk disagree:\nmemory {a:#?}\ndisk {b:#?}"),
    }
}

// ---- printing a configuration back as vm.conf ----

/// `s` as a quoted string; None if the grammar cannot say it (a quoted
/// string ends at a newline and may not hold a NUL; only a `-D` value
/// can bring either in).
fn q(s: &str) -> Option<String> {
    if s.contains(['\n', '\0']) {
        return None;
    }
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            o.push('\\');
        }
        o.push(c);
    }
    o.push('"');
    Some(o)
}

fn qp(p: &Path) -> Option<String> {
    q(p.to_str()?)
}

fn print_vm(o: &mut String, v: &VmDef) -> Option<()> {
    writeln!(o, "vm {} {{", q(&v.name)?).ok()?;
    o.push_str(if v.enabled {
        "\tenable\n"
    } else {
        "\tdisable\n"
    });
    if let Some(k) = &v.kernel {
        writeln!(o, "\tkernel {}", qp(k)?).ok()?;
    }
    if let Some(i) = &v.initrd {
        writeln!(o, "\tinitrd {}", qp(i)?).ok()?;
    }
    if let Some(c) = &v.cmdline {
        writeln!(o, "\tcmdline {}", q(c)?).ok()?;
    }
    if let Some(b) = v.boot_device {
        writeln!(o, "\tboot device {b}").ok()?;
    }
    if let Some(c) = &v.cdrom {
        writeln!(o, "\tcdrom {}", qp(c)?).ok()?;
    }
    for d in &v.disks {
        write!(o, "\tdisk {}", qp(&d.path)?).ok()?;
        if let Some(f) = d.format {
            write!(o, " format {f}").ok()?;
        }
        o.push('\n');
    }
    for i in &v.interfaces {
        o.push('\t');
        if i.local {
            o.push_str("local ");
        }
        o.push_str("interface ");
        if let Some(n) = &i.name {
            write!(o, "{} ", q(n)?).ok()?;
        }
        o.push('{');
        if let Some(s) = &i.switch {
            write!(o, " switch {}", q(s)?).ok()?;
        }
        if i.locked {
            o.push_str(" locked lladdr");
        } else if i.lladdr.is_some() {
            o.push_str(" lladdr");
        }
        if let Some(m) = &i.lladdr {
            write!(o, " {}", q(&format_lladdr(m))?).ok()?;
        }
        if let Some(g) = &i.group {
            write!(o, " group {}", q(g)?).ok()?;
        }
        if let Some(r) = i.rdomain {
            write!(o, " rdomain \"{r}\"").ok()?;
        }
        o.push_str(if i.up { " up }\n" } else { " down }\n" });
    }
    writeln!(o, "\tmemory {}", q(&format_size(v.memory))?).ok()?;
    writeln!(o, "\tcpus \"{}\"", v.cpus).ok()?;
    if let Some(s) = &v.cpu.vendor {
        writeln!(o, "\tcpu vendor {}", q(s)?).ok()?;
    }
    for (what, n) in [
        ("family", v.cpu.family),
        ("model", v.cpu.model),
        ("stepping", v.cpu.stepping),
    ] {
        if let Some(n) = n {
            writeln!(o, "\tcpu {what} \"{n}\"").ok()?;
        }
    }
    if !v.cpu.hide.is_empty() {
        let names: Option<Vec<String>> = v.cpu.hide.iter().map(|h| q(h)).collect();
        writeln!(o, "\tcpu hide {{ {} }}", names?.join(", ")).ok()?;
    }
    if let Some(ow) = &v.owner {
        writeln!(o, "\towner {}", q(&ow.to_string())?).ok()?;
    }
    writeln!(o, "\tgrace \"{}\"", v.grace_secs).ok()?;
    if !v.allow_instance.is_empty() {
        let mut items = Vec::new();
        for a in &v.allow_instance {
            match (a, &v.instance_owner) {
                (vmconf::InstanceOption::Owner, Some(ow)) => {
                    items.push(format!("owner {}", q(&ow.to_string())?))
                }
                _ => items.push(a.keyword().to_owned()),
            }
        }
        writeln!(o, "\tallow instance {{ {} }}", items.join(", ")).ok()?;
    }
    o.push_str("}\n");
    Some(())
}

/// `c` as vm.conf text; None where the grammar cannot say it.
fn print(c: &Config) -> Option<String> {
    let mut o = String::new();
    let g = &c.globals;
    writeln!(o, "local prefix \"{}\"", g.local_prefix).ok()?;
    if g.local_inet6 {
        writeln!(o, "local inet6 prefix \"{}\"", g.local_prefix6).ok()?;
    }
    if let Some(ow) = &g.socket_owner {
        writeln!(o, "socket owner {}", q(&ow.to_string())?).ok()?;
    }
    if let Some(p) = g.staggered.parallel {
        writeln!(
            o,
            "staggered start parallel \"{p}\" delay \"{}\"",
            g.staggered.delay_secs
        )
        .ok()?;
    }
    writeln!(o, "grace \"{}\"", g.grace_secs).ok()?;
    for s in &c.switches {
        writeln!(o, "switch {} {{", q(&s.name)?).ok()?;
        o.push_str(if s.enabled {
            "\tenable\n"
        } else {
            "\tdisable\n"
        });
        writeln!(o, "\tinterface {}", q(&s.interface)?).ok()?;
        if let Some(g) = &s.group {
            writeln!(o, "\tgroup {}", q(g)?).ok()?;
        }
        if s.locked {
            o.push_str("\tlocked lladdr\n");
        }
        if let Some(r) = s.rdomain {
            writeln!(o, "\trdomain \"{r}\"").ok()?;
        }
        o.push_str(if s.up { "\tup\n}\n" } else { "\tdown\n}\n" });
    }
    for v in &c.vms {
        print_vm(&mut o, v)?;
    }
    Some(o)
}

/// What printing cannot keep: where things were defined, and which VM an
/// instance came from (each is printed as a plain VM with its settings).
fn without_origins(mut c: Config) -> Config {
    for s in &mut c.switches {
        s.line = Default::default();
    }
    for v in &mut c.vms {
        v.line = Default::default();
        v.instance_of = None;
    }
    c
}

fn round_trips(c: &Config) {
    let json = serde_json::to_string(c).expect("a configuration serializes");
    let back: Config = serde_json::from_str(&json).expect("and deserializes");
    assert_eq!(&back, c, "JSON round trip");

    // An instance keeps its parent's `allow instance owner` user after
    // changing its own `allow instance` list (the owner and the list are
    // inherited separately): no plain block says that.
    let unsayable = c
        .vms
        .iter()
        .any(|v| v.instance_owner.is_some() && !v.allows(vmconf::InstanceOption::Owner));
    if unsayable {
        return;
    }
    let Some(text) = print(c) else { return };
    let (again, warnings) = vmconf::parse_str_with_warnings(
        "printed.conf",
        &text,
        &Options::default(),
        &MemFiles::new(),
    );
    let again = again.unwrap_or_else(|e| {
        panic!("the configuration printed back does not parse:\n{text}\n{e:#?}")
    });
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        without_origins(again),
        without_origins(c.clone()),
        "printed back and parsed again:\n{text}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|&b| b == SEP);
    let root = root();
    let mut files = vec![File {
        path: root.join("vm.conf"),
        bytes: parts.next().unwrap_or_default(),
    }];
    let mut absent = Vec::new();
    for inc in INCLUDES {
        match parts.next() {
            Some(bytes) => files.push(File {
                path: root.join(inc),
                bytes,
            }),
            None => absent.push(root.join(inc)),
        }
    }
    let mut opts = Options::default();
    if flags & 1 != 0 {
        let defines = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        for line in defines.split('\n').filter(|l| !l.is_empty()) {
            let (k, v) = line.split_once('=').unwrap_or((line, ""));
            opts.macros.push((k.to_owned(), v.to_owned()));
        }
    }
    let main = files[0].path.clone();

    let texts: Option<Vec<&str>> = files
        .iter()
        .map(|f| std::str::from_utf8(f.bytes).ok())
        .collect();
    let mem = texts.map(|texts| {
        let mut fs = MemFiles::new();
        for (f, t) in files.iter().zip(texts) {
            fs.insert(&f.path, t);
        }
        let out = vmconf::parse_file_with_warnings(&main, &opts, &fs);
        check_diagnostics(&out, &files, "memory");
        out
    });
    let disk = (flags & 2 != 0 || mem.is_none()).then(|| {
        for f in &files {
            std::fs::write(&f.path, f.bytes).expect("write a file");
        }
        for p in &absent {
            let _ = std::fs::remove_file(p);
        }
        let out = vmconf::parse_file_with_warnings(&main, &opts, &Confined);
        check_diagnostics(&out, &files, "disk");
        out
    });
    if let (Some(m), Some(d)) = (&mem, &disk) {
        compare(m, d);
    }
    if let Some(Ok(cfg)) = mem.as_ref().or(disk.as_ref()).map(|o| &o.0) {
        round_trips(cfg);
    }
});
