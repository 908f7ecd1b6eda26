//! `vm.conf` — the configuration file of vmd, in the grammar of OpenBSD's vm.conf(5), plus
//! what a Linux/KVM host needs.
//!
//! ```text
//! # comments run to the end of the line; a \ at the end of a line continues it
//! ramdisk = "/var/vm/bsd.rd"          # a macro, used as $ramdisk
//! include "vm.d/extra.conf"           # relative to this file's directory
//!
//! local prefix 100.64.0.0/10          # subnets for `local interface`s
//! local inet6 prefix fd00:1::/48      # or just `local inet6`: fd00::/8
//! socket owner :vmusers               # USER[:GROUP] or :GROUP
//! staggered start parallel 4 delay 20 # default: number of CPUs, 30 s
//! grace 60                            # default graceful-stop period for all VMs (120)
//!
//! switch "uplink" {                   # a Linux bridge
//!     interface br0                   # required
//!     group uplinks  locked lladdr  rdomain 1  up|down  enable|disable
//! }
//!
//! vm "web1" {
//!     enable | disable                # start with vmd? (default enable)
//!     kernel "/var/vm/vmlinuz"        # or `boot PATH`
//!     initrd "/var/vm/initrd.img"
//!     cmdline "console=ttyS0 root=/dev/vda"
//!     boot device disk|cdrom|net
//!     cpus 2                          # 1..254, default 1
//!     cpu vendor intel family 6 model 44  # what CPUID tells the guest; default: the host's
//!     cpu stepping 2                  # vendor intel|amd|"12 chars", family 1..270,
//!     cpu hide { cx16, xsave popcnt } #   model 0..255, stepping 0..15, hide NAME|{ ... }
//!     memory 1G                       # bytes or B/K/M/G/T, rounded up to MiB, default 512M
//!     cdrom "/var/vm/install.iso"
//!     disk "/var/vm/web1.qcow2" format qcow2    # up to 4; format raw|qcow2
//!     interface tap3 { switch "uplink"  lladdr fe:e1:ba:d0:00:01 }  # up to 4
//!     local interface                 # tap name optional; options as above
//!     interfaces 2                    # at least this many interfaces
//!     owner alice:staff
//!     grace 30
//!     allow instance { memory, disk, interface, owner bob }
//! }
//!
//! vm "web1" instance "web2" {         # inherits web1's settings, not its disks or MACs
//!     memory 2G                       # only what web1's `allow instance` allows
//! }
//! ```
//!
//! ```
//! use vmconf::{parse_str, MemFiles, Options};
//!
//! let text = "vm \"web1\" {\n  memory 1G\n  disk \"/var/vm/web1.img\"\n}\n";
//! let cfg = parse_str("vm.conf", text, &Options::default(), &MemFiles::new()).unwrap();
//! assert_eq!(cfg.vms[0].memory, 1 << 30);
//!
//! let errors = parse_str("vm.conf", "vm a {\n  memroy 1G\n}\n", &Options::default(),
//!     &MemFiles::new()).unwrap_err();
//! assert_eq!(errors[0].to_string(), "vm.conf:2: syntax error near \"memroy\"");
//! ```
//!
//! [`parse_file`] reads a file, [`parse_str`] text (with its `include`s read through a
//! [`FileSource`], so tests can keep files in memory with [`MemFiles`]). Either returns the
//! [`Config`] with every default filled in, or every error found, each `file:line: message`.
//!
//! # Differences from OpenBSD
//! - Linux additions: `kernel`, `initrd`, `cmdline`, `cpus`, `cpu`, `grace` (in a vm and at
//!   top level), `allow instance cpus`; `interface` names are Linux tap names (any valid name,
//!   `tap` meaning "pick one"); a switch's `interface` is a Linux bridge.
//! - `sev` and `seves` are refused: AMD SEV guests are not supported.
//! - Nothing is looked up while parsing: user and group names, paths and disk formats are
//!   kept as written and checked by vmd when it uses them.
//! - A macro used where an argument is expected stands for its whole value, so
//!   `cmdline $args` keeps the spaces of `args = "console=ttyS0 quiet"`; where a keyword is
//!   expected, its value is read as configuration text (as OpenBSD always does).
//! - `cmdline "a" "b"` joins its strings with a space; other string arguments are joined
//!   with nothing (`disk $dir "/disk.img"`), as in OpenBSD.
//! - A quoted string must end on its line (a `\` continuation excepted); `\\` is a backslash.
//! - A quote ends a bare word: `foo"bar"` is `foo` followed by `"bar"` (which then join).
//! - An interface's unknown `switch` is an error, not ignored. The checks an instance's
//!   options get against its parent's `allow instance` apply to the configuration itself.
//! - `enable`/`disable` is inherited by instances; changing it needs `allow instance disable`.
//! - `cpu` statements combine (each attribute at most once per vm block); an instance
//!   inherits each attribute and may change them with `allow instance boot`, since the CPU
//!   a guest is shown is there to suit the kernel it boots. Feature names are checked
//!   against the `cpumodel` crate's table, the one the VM process hides them with.
//! - Memory is rounded up (not down) to a whole MiB, and must be at least 2M.
//! - VM names follow OpenBSD's rule (letters, digits, `.`, `-`, `_`, not starting with
//!   `.`, `-` or `_`, at most 63 characters) and may not be all digits (those are VM ids):
//!   [`check_vm_name`], which vmd's API applies too.
//! - Instance-of-instance needs the parent's `allow instance` to include `instance`.
//! - An unterminated block is reported at the end of the file; parsing recovers from a
//!   syntax error at the end of its line, or of the block it is in, and goes on.

mod fs;
mod lexer;
mod parser;
mod size;
mod types;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use fs::{normalize, FileSource, MemFiles, StdFs};
pub use size::{format_size, parse_size};
pub use types::*;

/// What the command line adds to a configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `-D name=value`: macros that the file cannot redefine.
    pub macros: Vec<(String, String)>,
}

/// Parses the file at `path` and everything it includes.
pub fn parse_file(path: &Path, opts: &Options) -> Result<Config, Vec<Diagnostic>> {
    parse_file_with_warnings(path, opts, &StdFs).0
}

/// Parses `text`, the contents of a file called `name` (used in messages, and to find
/// relative `include`s: they are read from `fs`).
pub fn parse_str(
    name: &str,
    text: &str,
    opts: &Options,
    fs: &dyn FileSource,
) -> Result<Config, Vec<Diagnostic>> {
    parse_str_with_warnings(name, text, opts, fs).0
}

/// Like [`parse_file`], reading through `fs`, and also returning warnings (macros defined
/// but never used), which come whether or not the file has errors.
pub fn parse_file_with_warnings(
    path: &Path,
    opts: &Options,
    fs: &dyn FileSource,
) -> (Result<Config, Vec<Diagnostic>>, Vec<Diagnostic>) {
    let name = path.display().to_string();
    match fs.read_to_string(path) {
        Ok(text) => parser::parse(&name, &text, opts, fs),
        Err(e) => {
            // A file that is not UTF-8 is reported at its line, as an included one is.
            let at = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<fs::InvalidUtf8>());
            let (line, message) = match at {
                Some(i) => (i.line, "invalid UTF-8".to_owned()),
                None => (0, e.to_string()),
            };
            (
                Err(vec![Diagnostic {
                    file: name,
                    line,
                    message,
                }]),
                Vec::new(),
            )
        }
    }
}

/// Like [`parse_str`], also returning warnings.
pub fn parse_str_with_warnings(
    name: &str,
    text: &str,
    opts: &Options,
    fs: &dyn FileSource,
) -> (Result<Config, Vec<Diagnostic>>, Vec<Diagnostic>) {
    parser::parse(name, text, opts, fs)
}
