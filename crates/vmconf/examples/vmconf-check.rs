//! Parses a vm.conf and prints the result as JSON, or the errors (like `vmd -n`).
//!
//! `cargo run -p vmconf --example vmconf-check -- crates/vmconf/examples/vm.conf [-D name=value]...`

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut opts = vmconf::Options::default();
    let mut path = PathBuf::from("/etc/vm.conf");
    while let Some(a) = args.next() {
        if a == "-D" {
            let Some((k, v)) = args.next().and_then(|d| {
                d.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            }) else {
                eprintln!("usage: vmconf-check [file] [-D name=value]...");
                return ExitCode::from(2);
            };
            opts.macros.push((k, v));
        } else {
            path = PathBuf::from(a);
        }
    }
    let (result, warnings) = vmconf::parse_file_with_warnings(&path, &opts, &vmconf::StdFs);
    for w in warnings {
        eprintln!("warning: {w}");
    }
    match result {
        Ok(cfg) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&cfg).expect("serializable")
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            ExitCode::FAILURE
        }
    }
}
