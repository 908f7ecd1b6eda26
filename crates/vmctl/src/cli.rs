//! The command line: OpenBSD vmctl(8)'s commands and flags, and its rule
//! that a command may be shortened to any unambiguous prefix.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "vmctl",
    version,
    about = "control the virtual machine daemon",
    after_help = "Commands may be abbreviated to any unambiguous prefix (vmctl stat, vmctl sto web1).\n\
                  An id is a VM's number or its name."
)]
pub struct Cli {
    /// vmd's control socket
    #[arg(
        short = 's',
        long = "socket",
        value_name = "SOCKET",
        env = "VMD_SOCKET",
        default_value = api::DEFAULT_SOCKET
    )]
    pub socket: PathBuf,

    /// Print vmd's answers as JSON
    #[arg(long, global = true)]
    pub json: bool,

    /// Say what is being done
    #[arg(short, long, global = true)]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a VM from the configuration, or a new one defined here
    // Boxed: its many options make it far larger than the other commands.
    Start(Box<StartArgs>),
    /// Stop a VM (ask its guest to halt, then power it off)
    #[command(override_usage = "vmctl stop [-fw] <ID|-a>")]
    Stop(StopArgs),
    /// List VMs, or show one
    #[command(visible_alias = "show")]
    Status(StatusArgs),
    /// Connect to a VM's console; `~.` at the start of a line disconnects
    Console {
        /// VM number or name
        id: String,
    },
    /// Pause a VM
    Pause {
        /// VM number or name
        id: String,
    },
    /// Resume a paused VM
    Unpause {
        /// VM number or name
        id: String,
    },
    /// Wait until a VM has stopped
    Wait {
        /// VM number or name
        id: String,
    },
    /// Show a running VM's guestinfo variables, or set one for its guest
    #[command(
        override_usage = "vmctl guestinfo <ID> [KEY [VALUE]]",
        long_about = "Show a running VM's guestinfo variables (what its guest set with \
                      `vmware-rpctool \"info-set guestinfo.KEY VALUE\"`), or set one for \
                      the guest to read with `info-get guestinfo.KEY`.\n\n\
                      Without KEY: every variable as `KEY = VALUE` lines (control characters \
                      and backslashes escaped), or with --json one object. With KEY: its value \
                      as it is. With VALUE: sets it; an empty VALUE clears it, as the guest \
                      tools do. KEY is without the `guestinfo.` prefix (given, it is removed)."
    )]
    Guestinfo(GuestinfoArgs),
    /// Create a disk image: new, derived from a base image, or copied
    #[command(
        override_usage = "vmctl create [-b base | -i disk] [-s size] [raw:|qcow2:]<DISK>",
        long_about = "Create a disk image (vmctl does this itself, not vmd). DISK is raw, \
                      or qcow2 when it ends in .qcow2; a raw: or qcow2: prefix says which. \
                      An existing file is never overwritten, and one that a VM holds is \
                      reported in use.\n\n\
                      Without -b or -i: a new, empty image of -s size (a sparse file, or a \
                      qcow2 image with 64 KiB clusters).\n\
                      With -b base: a qcow2 image that holds only the changes over the base \
                      image (raw or qcow2, itself possibly on a base); -s defaults to the \
                      base's size.\n\
                      With -i disk: a copy of that image (raw or qcow2; a qcow2 with base \
                      images comes out whole) in DISK's format, as sparse as the input; -s \
                      defaults to the input's size and may be larger. A progress bar is \
                      shown when standard error is a terminal."
    )]
    Create(CreateArgs),
    /// Load additional configuration from a file
    Load {
        /// vm.conf file
        file: PathBuf,
    },
    /// Remove stopped VMs and reload the configuration
    Reload,
    /// Reset the running state
    Reset {
        #[arg(value_enum, default_value_t = ResetArg::All)]
        what: ResetArg,
    },
    /// Disable or enable verbose debug logging in vmd
    Log {
        #[arg(value_enum)]
        level: LogArg,
    },
    /// Print a shell completion script
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Attach to the console once started
    #[arg(short = 'c')]
    pub console: bool,
    /// Add a local network interface (vmd runs DHCP on it)
    #[arg(short = 'L')]
    pub local: bool,
    /// Kernel to boot
    #[arg(short = 'b', value_name = "path")]
    pub kernel: Option<String>,
    /// Boot device: disk, cdrom or net
    #[arg(short = 'B', value_name = "device", value_parser = ["disk", "cdrom", "net"])]
    pub boot_device: Option<String>,
    /// Disk image (may be given more than once); `raw:` or `qcow2:` may prefix it
    #[arg(short = 'd', value_name = "disk")]
    pub disks: Vec<String>,
    /// Number of network interfaces
    #[arg(short = 'i', value_name = "count")]
    pub interfaces: Option<u32>,
    /// Memory, e.g. 512M or 1G
    #[arg(short = 'm', value_name = "size", value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// Add an interface connected to this switch (may be given more than once)
    #[arg(short = 'n', value_name = "switch")]
    pub switches: Vec<String>,
    /// ISO image for a CD-ROM
    #[arg(short = 'r', value_name = "path")]
    pub cdrom: Option<String>,
    /// Start as an instance of this configured VM
    #[arg(short = 't', value_name = "name")]
    pub instance_of: Option<String>,
    /// Number of virtual CPUs
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub cpus: Option<u32>,
    /// Initial ramdisk for the kernel
    #[arg(long, value_name = "path")]
    pub initrd: Option<String>,
    /// Kernel command line
    #[arg(long, value_name = "str")]
    pub cmdline: Option<String>,
    /// CPU vendor the guest sees: intel, amd, or a 12-character vendor string
    #[arg(long, value_name = "vendor", value_parser = parse_cpu_vendor)]
    pub cpu_vendor: Option<String>,
    /// CPU family the guest sees, 1 to 270 (decimal, or hex with 0x)
    #[arg(long, value_name = "N", value_parser = cpumodel::parse_family)]
    pub cpu_family: Option<u32>,
    /// CPU model the guest sees, 0 to 255
    #[arg(long, value_name = "N", value_parser = cpumodel::parse_model)]
    pub cpu_model: Option<u32>,
    /// CPU stepping the guest sees, 0 to 15
    #[arg(long, value_name = "N", value_parser = cpumodel::parse_stepping)]
    pub cpu_stepping: Option<u32>,
    /// CPU features to hide, comma separated (e.g. cx16,xsave; "" hides none)
    #[arg(long, value_name = "list", value_parser = parse_cpu_hide)]
    pub cpu_hide: Option<FeatureList>,
    /// VM number or name (a new name defines a VM)
    #[arg(value_name = "id|name")]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Power off at once, without asking the guest
    #[arg(short = 'f')]
    pub force: bool,
    /// Wait until the VM has stopped
    #[arg(short = 'w')]
    pub wait: bool,
    /// Stop all running VMs
    #[arg(short = 'a', conflicts_with = "id")]
    pub all: bool,
    /// VM number or name
    #[arg(required_unless_present = "all")]
    pub id: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only VMs that are running (or paused, starting, stopping)
    #[arg(short = 'r')]
    pub running: bool,
    /// VM number or name
    pub id: Option<String>,
}

#[derive(Debug, Args)]
pub struct GuestinfoArgs {
    /// VM number or name
    pub id: String,
    /// Variable name, without `guestinfo.`
    pub key: Option<String>,
    /// Value to set (empty clears it)
    // A value may well start with '-' (a number, an option for the guest).
    #[arg(allow_hyphen_values = true)]
    pub value: Option<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Size of the new image with a unit (K, M, G, T: 10G), rounded up to
    /// megabytes; at least 1M. A number without a unit counts bytes
    #[arg(short = 's', value_name = "size", value_parser = parse_size_arg)]
    pub size: Option<SizeArg>,
    /// Copy this image (raw or qcow2, by its first bytes; a raw: or qcow2:
    /// prefix says which) into the new one, converting it to the new one's
    /// format
    #[arg(short = 'i', value_name = "disk", conflicts_with = "base")]
    pub input: Option<String>,
    /// Make a qcow2 image that holds only the changes over this base image
    /// (raw or qcow2, by its first bytes; a raw: or qcow2: prefix says which)
    #[arg(short = 'b', value_name = "base")]
    pub base: Option<String>,
    /// Path of the image to create; `raw:` or `qcow2:` may prefix it, else
    /// a name ending in .qcow2 makes a qcow2 image and any other a raw one
    pub disk: String,
}

/// A size as given on the command line (`-s`), with what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeArg {
    /// In bytes.
    pub bytes: u64,
    /// Whether a unit letter (B, K, M, G, ...) was given.
    pub has_unit: bool,
    /// As typed.
    pub text: String,
}

/// Parses `-s` of `create`: [`crate::size::parse_size`], remembering
/// whether a unit was given.
pub fn parse_size_arg(s: &str) -> Result<SizeArg, String> {
    let bytes = crate::size::parse_size(s)?;
    Ok(SizeArg {
        bytes,
        has_unit: s.trim().ends_with(|c: char| c.is_ascii_alphabetic()),
        text: s.trim().to_owned(),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ResetArg {
    All,
    Vms,
    Switches,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogArg {
    Brief,
    Verbose,
}

/// `-m`: a size of at least one megabyte.
fn parse_memory(s: &str) -> Result<u64, String> {
    let n = crate::size::parse_size(s)?;
    if n < crate::size::MIB {
        return Err("size must be at least one megabyte".into());
    }
    Ok(n)
}

/// `--cpu-vendor`: checked here too, so a typo is a usage error before
/// anything is sent; sent as written (vmd reads `intel` and `amd` itself).
fn parse_cpu_vendor(s: &str) -> Result<String, String> {
    cpumodel::parse_vendor(s).map(|_| s.to_string())
}

/// `--cpu-hide`'s names, from one argument (clap would read a bare `Vec`
/// as an option given several times).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureList(pub Vec<String>);

/// `--cpu-hide`: feature names, comma separated; empty: none.
fn parse_cpu_hide(s: &str) -> Result<FeatureList, String> {
    let mut names: Vec<String> = Vec::new();
    for name in s.split(',').filter(|n| !n.is_empty()) {
        if cpumodel::feature(name).is_none() {
            return Err(format!(
                "unknown CPU feature {name:?}; known: {}",
                cpumodel::feature_names()
            ));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    Ok(FeatureList(names))
}

/// How a command word matched.
#[derive(Debug, PartialEq, Eq)]
pub enum Match<'a> {
    /// The name itself, or the one name it is a prefix of.
    One(&'a str),
    Ambiguous(Vec<&'a str>),
    None,
}

/// Matches `word` against command names: an exact name wins, else it must
/// be the prefix of exactly one.
pub fn match_command<'a>(word: &str, names: &[&'a str]) -> Match<'a> {
    if let Some(n) = names.iter().find(|n| **n == word) {
        return Match::One(n);
    }
    let hits: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !word.is_empty() && n.starts_with(word))
        .collect();
    match hits.len() {
        0 => Match::None,
        1 => Match::One(hits[0]),
        _ => Match::Ambiguous(hits),
    }
}

/// The names a prefix may stand for: the visible commands, their visible
/// aliases and `help`. Hidden ones must be spelt out.
pub fn command_names() -> Vec<String> {
    let cmd = Cli::command();
    let mut names: Vec<String> = Vec::new();
    for sc in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        names.push(sc.get_name().to_string());
        names.extend(sc.get_visible_aliases().map(str::to_string));
    }
    if !names.iter().any(|n| n == "help") {
        names.push("help".into());
    }
    names
}

/// Where the command word is in `args` (after the program name and the
/// global options, of which only `-s`/`--socket` takes a value).
fn command_index(args: &[OsString]) -> Option<usize> {
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_str()?;
        if a == "--" {
            return None;
        } else if let Some(long) = a.strip_prefix("--") {
            i += if long == "socket" { 2 } else { 1 };
        } else if let Some(shorts) = a.strip_prefix('-').filter(|s| !s.is_empty()) {
            // A cluster like -vs SOCKET or -s/run/x.sock.
            i += match shorts.find('s') {
                Some(p) if p + 1 == shorts.len() => 2,
                _ => 1,
            };
        } else {
            return Some(i);
        }
    }
    None
}

/// Replaces an abbreviated command word with the command's name, as
/// OpenBSD's vmctl accepts. Unknown words are left for clap to reject.
/// Errs with a message for an ambiguous one.
pub fn expand_command(mut args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Some(i) = command_index(&args) else {
        return Ok(args);
    };
    let word = args[i].to_str().unwrap_or_default().to_string();
    let names = command_names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    match match_command(&word, &names) {
        Match::One(name) => args[i] = name.into(),
        Match::Ambiguous(hits) => {
            return Err(format!(
                "ambiguous command: {word} (could be {})",
                hits.join(", ")
            ))
        }
        Match::None => {}
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &[
        "start", "stop", "status", "show", "console", "pause", "unpause", "wait", "create", "load",
        "reload", "reset", "log", "help",
    ];

    #[test]
    fn unique_prefixes() {
        assert_eq!(match_command("stat", NAMES), Match::One("status"));
        assert_eq!(match_command("sto", NAMES), Match::One("stop"));
        assert_eq!(match_command("star", NAMES), Match::One("start"));
        assert_eq!(match_command("sh", NAMES), Match::One("show"));
        assert_eq!(match_command("co", NAMES), Match::One("console"));
        assert_eq!(match_command("cr", NAMES), Match::One("create"));
        assert_eq!(match_command("p", NAMES), Match::One("pause"));
        assert_eq!(match_command("u", NAMES), Match::One("unpause"));
        assert_eq!(match_command("w", NAMES), Match::One("wait"));
        assert_eq!(match_command("rel", NAMES), Match::One("reload"));
        assert_eq!(match_command("res", NAMES), Match::One("reset"));
        assert_eq!(
            match_command("lo", NAMES),
            Match::Ambiguous(vec!["load", "log"])
        );
        assert_eq!(match_command("loa", NAMES), Match::One("load"));
    }

    #[test]
    fn ambiguous_prefixes() {
        assert_eq!(
            match_command("s", NAMES),
            Match::Ambiguous(vec!["start", "stop", "status", "show"])
        );
        assert_eq!(
            match_command("st", NAMES),
            Match::Ambiguous(vec!["start", "stop", "status"])
        );
        assert_eq!(
            match_command("sta", NAMES),
            Match::Ambiguous(vec!["start", "status"])
        );
        assert_eq!(
            match_command("re", NAMES),
            Match::Ambiguous(vec!["reload", "reset"])
        );
        assert_eq!(
            match_command("c", NAMES),
            Match::Ambiguous(vec!["console", "create"])
        );
    }

    #[test]
    fn exact_match_wins() {
        // "log" is also a prefix of nothing else here, but "stop" vs
        // "stopall" would be: exact wins.
        assert_eq!(match_command("log", NAMES), Match::One("log"));
        assert_eq!(
            match_command("stop", &["stop", "stopall"]),
            Match::One("stop")
        );
        assert_eq!(
            match_command("sto", &["stop", "stopall"]),
            Match::Ambiguous(vec!["stop", "stopall"])
        );
        assert_eq!(match_command("x", NAMES), Match::None);
        assert_eq!(match_command("", NAMES), Match::None);
        assert_eq!(match_command("statusx", NAMES), Match::None);
    }

    #[test]
    fn real_command_names() {
        let names = command_names();
        for n in [
            "start",
            "stop",
            "status",
            "show",
            "console",
            "pause",
            "unpause",
            "wait",
            "create",
            "load",
            "reload",
            "reset",
            "log",
            "guestinfo",
            "help",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        assert!(!names.iter().any(|x| x == "completions"));
    }

    #[test]
    fn guestinfo_takes_no_prefix_from_another_command() {
        let names = command_names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        // The only command starting with "g": "g" alone is enough, and no
        // prefix that named another command before is shared with it.
        assert_eq!(
            names
                .iter()
                .filter(|n| n.starts_with('g'))
                .collect::<Vec<_>>(),
            [&"guestinfo"]
        );
        assert_eq!(match_command("g", &names), Match::One("guestinfo"));
        assert_eq!(match_command("gu", &names), Match::One("guestinfo"));
        let others: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| *n != "guestinfo")
            .collect();
        for n in &others {
            for end in 1..=n.len() {
                let word = &n[..end];
                assert_eq!(
                    match_command(word, &names),
                    match_command(word, &others),
                    "{word}"
                );
            }
        }
    }

    #[test]
    fn parses_guestinfo() {
        let parse = |args: &[&str]| {
            let mut v = vec!["vmctl", "guestinfo"];
            v.extend_from_slice(args);
            match Cli::try_parse_from(v).map(|c| c.command) {
                Ok(Command::Guestinfo(g)) => Ok((g.id, g.key, g.value)),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e.kind()),
            }
        };
        let s = |x: &str| Some(x.to_owned());
        assert_eq!(parse(&["web1"]), Ok(("web1".into(), None, None)));
        assert_eq!(parse(&["web1", "ip"]), Ok(("web1".into(), s("ip"), None)));
        assert_eq!(
            parse(&["web1", "role", "db"]),
            Ok(("web1".into(), s("role"), s("db")))
        );
        // An empty value (clears it) and one that looks like an option.
        assert_eq!(
            parse(&["web1", "role", ""]),
            Ok(("web1".into(), s("role"), s("")))
        );
        assert_eq!(
            parse(&["web1", "n", "-5"]),
            Ok(("web1".into(), s("n"), s("-5")))
        );
        assert!(parse(&[]).is_err());
        assert!(parse(&["web1", "k", "v", "extra"]).is_err());
        let cli = Cli::try_parse_from(["vmctl", "guestinfo", "--json", "web1"]).unwrap();
        assert!(cli.json);
    }

    fn expand(args: &[&str]) -> Result<Vec<String>, String> {
        expand_command(args.iter().map(OsString::from).collect())
            .map(|v| v.into_iter().map(|s| s.into_string().unwrap()).collect())
    }

    #[test]
    fn expands_in_argv() {
        assert_eq!(expand(&["vmctl", "stat"]).unwrap(), ["vmctl", "status"]);
        assert_eq!(
            expand(&["vmctl", "sto", "-w", "web1"]).unwrap(),
            ["vmctl", "stop", "-w", "web1"]
        );
        assert_eq!(
            expand(&["vmctl", "-s", "/tmp/x", "--json", "stat", "web1"]).unwrap(),
            ["vmctl", "-s", "/tmp/x", "--json", "status", "web1"]
        );
        assert_eq!(
            expand(&["vmctl", "--socket", "sto", "sto"]).unwrap(),
            ["vmctl", "--socket", "sto", "stop"]
        );
        assert_eq!(
            expand(&["vmctl", "-vs", "sta", "stat"]).unwrap(),
            ["vmctl", "-vs", "sta", "status"]
        );
        assert_eq!(
            expand(&["vmctl", "-s/x", "sto", "s"]).unwrap(),
            ["vmctl", "-s/x", "stop", "s"]
        );
        // Only the command word is touched.
        assert_eq!(
            expand(&["vmctl", "start", "sto"]).unwrap(),
            ["vmctl", "start", "sto"]
        );
        // Hidden commands are not abbreviated; unknown words go to clap.
        assert_eq!(
            expand(&["vmctl", "compl", "bash"]).unwrap(),
            ["vmctl", "compl", "bash"]
        );
        assert_eq!(
            expand(&["vmctl", "completions", "bash"]).unwrap(),
            ["vmctl", "completions", "bash"]
        );
        assert_eq!(expand(&["vmctl"]).unwrap(), ["vmctl"]);
        assert_eq!(
            expand(&["vmctl", "st", "web1"]).unwrap_err(),
            "ambiguous command: st (could be start, stop, status)"
        );
    }

    #[test]
    fn clap_tree_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_openbsd_flags() {
        let cli = Cli::try_parse_from([
            "vmctl",
            "start",
            "-cL",
            "-b",
            "/bsd",
            "-d",
            "a.img",
            "-d",
            "raw:b.img",
            "-i",
            "2",
            "-m",
            "1G",
            "-n",
            "uplink",
            "-r",
            "x.iso",
            "-t",
            "base",
            "--cpus",
            "2",
            "web1",
        ])
        .unwrap();
        let Command::Start(s) = cli.command else {
            panic!()
        };
        assert!(s.console && s.local);
        assert_eq!(s.memory, Some(1 << 30));
        assert_eq!(s.disks, ["a.img", "raw:b.img"]);
        assert_eq!(s.id, "web1");
        assert!(Cli::try_parse_from(["vmctl", "start", "-m", "512K", "x"]).is_err());
        assert!(Cli::try_parse_from(["vmctl", "start", "--cpus", "0", "x"]).is_err());
        let cli = Cli::try_parse_from(["vmctl", "stop", "-fwa"]).unwrap();
        let Command::Stop(s) = cli.command else {
            panic!()
        };
        assert!(s.force && s.wait && s.all && s.id.is_none());
        assert!(Cli::try_parse_from(["vmctl", "stop"]).is_err());
        assert!(Cli::try_parse_from(["vmctl", "stop", "-a", "web1"]).is_err());
        let cli = Cli::try_parse_from(["vmctl", "show", "-r", "--json"]).unwrap();
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Command::Status(StatusArgs {
                running: true,
                id: None
            })
        ));
        let cli = Cli::try_parse_from(["vmctl", "create", "-s", "1G", "disk.img"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Create(CreateArgs {
                size: Some(SizeArg {
                    bytes: 0x4000_0000,
                    has_unit: true,
                    ..
                }),
                ..
            })
        ));
        let cli = Cli::try_parse_from(["vmctl", "create", "-s", "10", "disk.img"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Create(CreateArgs {
                size: Some(SizeArg {
                    bytes: 10,
                    has_unit: false,
                    ..
                }),
                ..
            })
        ));
        assert!(Cli::try_parse_from(["vmctl", "create", "-b", "x", "-i", "y", "z"]).is_err());
        let cli = Cli::try_parse_from(["vmctl", "reset"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Reset {
                what: ResetArg::All
            }
        ));
        assert!(Cli::try_parse_from(["vmctl", "log"]).is_err());
        assert!(Cli::try_parse_from(["vmctl", "log", "verbose"]).is_ok());
    }
}
