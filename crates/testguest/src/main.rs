//! `testguest list` / `testguest path NAME`: find the built test guests
//! from scripts, e.g. `qemu-system-x86_64 -kernel "$(cargo run -q -p
//! testguest -- path hello)"`.

use std::process::ExitCode;

const USAGE: &str = "usage: testguest list | testguest path NAME";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["list"] => {
            testguest::NAMES.iter().for_each(|name| println!("{name}"));
            ExitCode::SUCCESS
        }
        ["path", name] => match testguest::path(name) {
            Some(path) => {
                println!("{}", path.display());
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("testguest: no guest named '{name}' (try: testguest list)");
                ExitCode::FAILURE
            }
        },
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
