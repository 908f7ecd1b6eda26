//! Interface groups as vm.conf names them.
//!
//! OpenBSD groups are names (`group "vms"`); Linux groups are numbers
//! (IFLA_GROUP), which iproute2 lets you name in its `group` table. vm.conf may
//! therefore say either, and a name resolves the way `ip link set dev X group
//! NAME` resolves it.

use crate::Error;

/// iproute2's tables, in its order: the /etc file wins; the /usr one is read
/// only when the /etc one does not exist (iproute2's rtnl_group_init).
const TABLES: [&str; 2] = ["/etc/iproute2/group", "/usr/share/iproute2/group"];

/// An interface group as vm.conf writes it: a decimal number, or a name
/// looked up in /etc/iproute2/group (or, when that file does not exist,
/// /usr/share/iproute2/group) as `ip` does. Else an error naming both.
pub fn parse_group(name: &str) -> Result<u32, Error> {
    parse_group_in(name, |path| std::fs::read_to_string(path).ok())
}

/// `parse_group` over a `read` that gives a table file's text (None: absent).
fn parse_group_in(name: &str, read: impl Fn(&str) -> Option<String>) -> Result<u32, Error> {
    if name.is_empty() {
        return Err(Error::new("empty interface group name"));
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return name.parse::<u32>().map_err(|_| {
            Error::new(format!(
                "interface group {name} is out of range (0 to {})",
                u32::MAX
            ))
        });
    }
    for path in TABLES {
        if let Some(text) = read(path) {
            return lookup_group(name, &text).ok_or_else(|| not_found(name, Some(path)));
        }
    }
    Err(not_found(name, None))
}

/// The error for a name in no table; `read`: the table that was read.
fn not_found(name: &str, read: Option<&str>) -> Error {
    let read = match read {
        Some(path) => format!("{path} was read"),
        None => "neither file exists".to_string(),
    };
    Error::new(format!(
        "unknown interface group {name}: not a number, and not named in {} or {} ({read})",
        TABLES[0], TABLES[1]
    ))
}

/// The number `name` has in an iproute2 group table: lines "NUMBER NAME",
/// NUMBER decimal or 0x hex, '#' comments and blank lines skipped. Lines
/// that are not like that are skipped too (iproute2 stops reading there and
/// warns). A name given twice takes its last number, as iproute2 does.
fn lookup_group(name: &str, table_text: &str) -> Option<u32> {
    let mut found = None;
    for line in table_text.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(number), Some(entry)) = (words.next(), words.next()) else {
            continue;
        };
        if entry != name {
            continue;
        }
        let number = match number.strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => number.parse::<u32>().ok(),
        };
        if number.is_some() {
            found = number;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
# device group names
#
0\tdefault
  # indented comment
10 vms   # the VMs' taps
0x20 uplinks
twelve bad
11
11 vms
";

    #[test]
    fn table_lookup() {
        assert_eq!(lookup_group("default", TABLE), Some(0));
        assert_eq!(lookup_group("vms", TABLE), Some(11));
        assert_eq!(lookup_group("uplinks", TABLE), Some(0x20));
        assert_eq!(lookup_group("bad", TABLE), None);
        assert_eq!(lookup_group("#", TABLE), None);
        assert_eq!(lookup_group("device", TABLE), None);
        assert_eq!(lookup_group("nope", TABLE), None);
        assert_eq!(lookup_group("vms", ""), None);
    }

    #[test]
    fn numbers() {
        let none = |_: &str| -> Option<String> { panic!("a number needs no table") };
        assert_eq!(parse_group_in("0", none), Ok(0));
        assert_eq!(parse_group_in("42", none), Ok(42));
        assert_eq!(parse_group_in("4294967295", none), Ok(u32::MAX));
        let e = parse_group_in("4294967296", none).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }

    #[test]
    fn names() {
        let etc = |path: &str| (path == TABLES[0]).then(|| TABLE.to_string());
        assert_eq!(parse_group_in("vms", etc), Ok(11));
        // The /usr table is read only when /etc has none.
        let usr = |path: &str| (path == TABLES[1]).then(|| "7 vms\n".to_string());
        assert_eq!(parse_group_in("vms", usr), Ok(7));
        let both = |path: &str| {
            Some(
                if path == TABLES[0] {
                    "1 a\n"
                } else {
                    "2 vms\n"
                }
                .to_string(),
            )
        };
        let e = parse_group_in("vms", both).unwrap_err();
        assert!(
            e.to_string().contains("/etc/iproute2/group was read"),
            "{e}"
        );
    }

    #[test]
    fn unknown() {
        let e = parse_group_in("nope", |_| None).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("unknown interface group nope"), "{text}");
        assert!(text.contains("/etc/iproute2/group"), "{text}");
        assert!(text.contains("/usr/share/iproute2/group"), "{text}");
        assert!(parse_group_in("", |_| None).is_err());
        assert!(parse_group_in("-1", |_| None).is_err());
        // Whatever the host has, a made-up name is not in it.
        assert!(parse_group("no-such-group-hostnet").is_err());
        assert_eq!(parse_group("5"), Ok(5));
    }
}
