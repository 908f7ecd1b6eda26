//! vmctl: the command line client of vmd, after OpenBSD's vmctl(8).
//! It talks HTTP/JSON to vmd's control socket (see `api::v1`), except for
//! `create`, which it does itself, and `console`, which opens the VM's pty.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use api::v1::{
    ConfigResult, CpuRequest, LoadRequest, LogLevel, LogRequest, Message, ResetRequest, ResetWhat,
    StartRequest, StopRequest, VmStatus,
};
use clap::{CommandFactory, Parser};

use api::text::{escape, printable};
use vmctl::cli::{
    self, Cli, Command, CreateArgs, LogArg, ResetArg, StartArgs, StatusArgs, StopArgs,
};
use vmctl::http::{self, vm_path, Client};
use vmctl::{console, create, os_error, table};

/// How a command failed: the message for `vmctl: ...`.
type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args = match cli::expand_command(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("vmctl: {msg}");
            eprintln!("usage: vmctl [-v] [-s socket] [--json] command [arg ...]");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    match run(cli) {
        Ok(code) => code,
        Err(msg) => {
            let _ = io::stdout().flush();
            // vmd's messages quote what clients and guests sent: one line,
            // no escape sequences.
            eprintln!("vmctl: {}", printable(&msg));
            ExitCode::FAILURE
        }
    }
}

struct Ctx {
    client: Client,
    json: bool,
    verbose: bool,
}

impl Ctx {
    fn say(&self, msg: impl AsRef<str>) {
        if self.verbose && !self.json {
            eprintln!("vmctl: {}", printable(msg.as_ref()));
        }
    }

    fn print_json(&self, v: &impl serde::Serialize) -> Result<()> {
        let s = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
        let mut out = io::stdout().lock();
        writeln!(out, "{s}").map_err(|e| format!("stdout: {}", os_error(&e)))
    }

    fn vm(&self, id: &str) -> Result<VmStatus> {
        self.client.get(&vm_path(id, "")).map_err(err)
    }
}

fn err(e: http::Error) -> String {
    e.to_string()
}

fn run(cli: Cli) -> Result<ExitCode> {
    let ctx = Ctx {
        client: Client::new(&cli.socket, cli.verbose),
        json: cli.json,
        verbose: cli.verbose,
    };
    match cli.command {
        Command::Start(a) => start(&ctx, *a)?,
        Command::Stop(a) => stop(&ctx, a)?,
        Command::Status(a) => status(&ctx, a)?,
        Command::Console { id } => {
            let vm = ctx.vm(&id)?;
            console(&vm)?;
        }
        Command::Pause { id } => simple(&ctx, &id, "/pause", "paused")?,
        Command::Unpause { id } => simple(&ctx, &id, "/unpause", "unpaused")?,
        Command::Wait { id } => {
            let vm: VmStatus = ctx.client.get(&vm_path(&id, "/wait")).map_err(err)?;
            if ctx.json {
                ctx.print_json(&vm)?;
            }
            ctx.say(format!(
                "vm {} stopped: {}",
                vm.name,
                vm.last_exit.as_deref().unwrap_or("-")
            ));
        }
        Command::Guestinfo(a) => guestinfo(&ctx, a)?,
        Command::Create(a) => create(&ctx, a)?,
        Command::Load { file } => {
            let path = std::path::absolute(&file)
                .map_err(|e| format!("{}: {}", file.display(), os_error(&e)))?;
            let req = LoadRequest {
                path: path.to_string_lossy().into_owned(),
            };
            let res: ConfigResult = ctx
                .client
                .post("/v1/config/load", Some(&req))
                .map_err(err)?;
            return config_result(&ctx, res, &format!("loaded {}", req.path));
        }
        Command::Reload => {
            let res: ConfigResult = ctx
                .client
                .post("/v1/config/reload", None::<&()>)
                .map_err(err)?;
            return config_result(&ctx, res, "reloaded the configuration");
        }
        Command::Reset { what } => {
            let what = match what {
                ResetArg::All => ResetWhat::All,
                ResetArg::Vms => ResetWhat::Vms,
                ResetArg::Switches => ResetWhat::Switches,
            };
            let m: Message = ctx
                .client
                .post("/v1/reset", Some(&ResetRequest { what }))
                .map_err(err)?;
            message(&ctx, &m)?;
        }
        Command::Log { level } => {
            let level = match level {
                LogArg::Brief => LogLevel::Brief,
                LogArg::Verbose => LogLevel::Verbose,
            };
            let m: Message = ctx
                .client
                .post("/v1/log", Some(&LogRequest { level }))
                .map_err(err)?;
            message(&ctx, &m)?;
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "vmctl", &mut io::stdout());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn message(ctx: &Ctx, m: &Message) -> Result<()> {
    if ctx.json {
        ctx.print_json(m)
    } else {
        ctx.say(&m.message);
        Ok(())
    }
}

/// `load`/`reload`: each error as `file:line: message`, and failure if any.
fn config_result(ctx: &Ctx, res: ConfigResult, done: &str) -> Result<ExitCode> {
    if ctx.json {
        ctx.print_json(&res)?;
    } else {
        for e in &res.errors {
            eprintln!("{}", printable(e));
        }
    }
    if !res.errors.is_empty() {
        return Ok(ExitCode::FAILURE);
    }
    ctx.say(format!("{done}: {} vms defined", res.vms.len()));
    Ok(ExitCode::SUCCESS)
}

/// A path for vmd, which does not share our working directory; a `raw:`
/// or `qcow2:` format prefix stays in front.
fn abs_path(p: &str) -> Result<String> {
    let (prefix, path) = match p.split_once(':') {
        Some((f @ ("raw" | "qcow2"), rest)) => (format!("{f}:"), rest),
        _ => (String::new(), p),
    };
    let abs = std::path::absolute(path).map_err(|e| format!("{path}: {}", os_error(&e)))?;
    Ok(format!("{prefix}{}", abs.display()))
}

fn start(ctx: &Ctx, a: StartArgs) -> Result<()> {
    // The API has no place for these yet; better to say so than to start a
    // VM other than the one asked for.
    if a.boot_device.as_deref() == Some("net") {
        return Err("start -B net: network boot is not supported".into());
    }
    let opt = |p: &Option<String>| p.as_deref().map(abs_path).transpose();
    let cpu = cpu_request(&a);
    let req = StartRequest {
        name: a.id,
        kernel: opt(&a.kernel)?,
        initrd: opt(&a.initrd)?,
        cmdline: a.cmdline,
        memory: a.memory,
        cpus: a.cpus,
        disks: a.disks.iter().map(|d| abs_path(d)).collect::<Result<_>>()?,
        cdrom: opt(&a.cdrom)?,
        boot_device: a.boot_device,
        interfaces: a.interfaces,
        local_interface: a.local,
        switches: a.switches,
        instance_of: a.instance_of,
        cpu,
    };
    let vm: VmStatus = ctx.client.post("/v1/vms", Some(&req)).map_err(err)?;
    if ctx.json {
        ctx.print_json(&vm)?;
    } else {
        // OpenBSD's vmctl says this much on success.
        match &vm.tty {
            Some(tty) => eprintln!(
                "vmctl: started vm {} successfully, tty {}",
                vm.id,
                escape(tty)
            ),
            None => eprintln!("vmctl: started vm {} successfully", vm.id),
        }
    }
    if a.console {
        // The pty may come a moment after the process.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut vm = vm;
        while vm.tty.is_none() && table::is_running(&vm) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            vm = ctx.vm(&vm.id.to_string())?;
        }
        console(&vm)?;
    }
    Ok(())
}

/// The `--cpu-*` flags, if any was given.
fn cpu_request(a: &StartArgs) -> Option<CpuRequest> {
    let cpu = CpuRequest {
        vendor: a.cpu_vendor.clone(),
        family: a.cpu_family,
        model: a.cpu_model,
        stepping: a.cpu_stepping,
        hide: a.cpu_hide.as_ref().map(|h| h.0.clone()),
    };
    (cpu != CpuRequest::default()).then_some(cpu)
}

fn console(vm: &VmStatus) -> Result<()> {
    match &vm.tty {
        Some(tty) => console::run(tty),
        None => Err(format!(
            "vm {} has no console: it is {}",
            vm.name,
            table::state_name(vm.state)
        )),
    }
}

fn stop(ctx: &Ctx, a: StopArgs) -> Result<()> {
    let Some(id) = a.id else {
        return stop_all(ctx, a.force, a.wait);
    };
    ctx.say(format!("stopping vm {id}"));
    let req = StopRequest {
        force: a.force,
        wait: a.wait,
    };
    let vm: VmStatus = ctx
        .client
        .post(&vm_path(&id, "/stop"), Some(&req))
        .map_err(err)?;
    if ctx.json {
        ctx.print_json(&vm)?;
    }
    if a.wait {
        ctx.say(format!("vm {} stopped", vm.name));
    }
    Ok(())
}

/// `stop -a`: ask every running VM to stop, then (with -w) wait for each.
fn stop_all(ctx: &Ctx, force: bool, wait: bool) -> Result<()> {
    let vms: Vec<VmStatus> = ctx.client.get("/v1/vms").map_err(err)?;
    let req = StopRequest { force, wait: false };
    let mut failed = 0;
    let mut stopping = Vec::new();
    let running: Vec<&VmStatus> = vms.iter().filter(|v| table::is_running(v)).collect();
    for vm in &running {
        ctx.say(format!("stopping vm {}", vm.name));
        match ctx
            .client
            .post::<VmStatus>(&vm_path(&vm.id.to_string(), "/stop"), Some(&req))
        {
            Ok(v) => stopping.push(v),
            // Connection trouble ends it all; a VM's own trouble does not.
            Err(e @ http::Error::Api { .. }) => {
                eprintln!("vmctl: {}", printable(&format!("{}: {e}", vm.name)));
                failed += 1;
            }
            Err(e) => return Err(err(e)),
        }
    }
    if wait {
        for v in stopping.iter_mut() {
            match ctx
                .client
                .get::<VmStatus>(&vm_path(&v.id.to_string(), "/wait"))
            {
                Ok(done) => {
                    ctx.say(format!("vm {} stopped", done.name));
                    *v = done;
                }
                Err(e @ http::Error::Api { .. }) => {
                    eprintln!("vmctl: {}", printable(&format!("{}: {e}", v.name)));
                    failed += 1;
                }
                Err(e) => return Err(err(e)),
            }
        }
    }
    if ctx.json {
        ctx.print_json(&stopping)?;
    }
    if failed > 0 {
        return Err(format!("stop -a: {failed} of {} vms failed", running.len()));
    }
    Ok(())
}

fn status(ctx: &Ctx, a: StatusArgs) -> Result<()> {
    let mut vms: Vec<VmStatus> = match &a.id {
        Some(id) => vec![ctx.vm(id)?],
        None => ctx.client.get("/v1/vms").map_err(err)?,
    };
    if a.running {
        vms.retain(table::is_running);
    }
    if ctx.json {
        // vmd's objects as it sends them (the same type, so the same
        // fields in the same order), always as an array.
        return ctx.print_json(&vms);
    }
    vms.sort_by_key(|v| v.id);
    let mut out = table::format_table(&vms);
    // One VM asked for by name: its disks, CD-ROM and interfaces below
    // the table.
    if a.id.is_some() {
        out.push_str(&table::format_devices(&vms));
    }
    io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .map_err(|e| format!("stdout: {}", os_error(&e)))
}

/// pause/unpause: POST and be quiet about it.
fn simple(ctx: &Ctx, id: &str, op: &str, done: &str) -> Result<()> {
    let vm: VmStatus = ctx
        .client
        .post(&vm_path(id, op), None::<&()>)
        .map_err(err)?;
    if ctx.json {
        ctx.print_json(&vm)?;
    }
    ctx.say(format!("{done} vm {}", vm.name));
    Ok(())
}

/// `guestinfo ID`: the listing; `guestinfo ID KEY`: one value, exactly
/// (for `$(...)`), or escaped as the listing is when stdout is a terminal;
/// `guestinfo ID KEY VALUE`: set it, quietly.
fn guestinfo(ctx: &Ctx, a: cli::GuestinfoArgs) -> Result<()> {
    use api::v1::{Guestinfo, GuestinfoValue};
    // vmd checks the key too; checked here, one too long for a URL is
    // refused with the reason rather than with the HTTP server's bare 414.
    if let Some(k) = &a.key {
        api::v1::guestinfo_key(k)?;
    }
    let path = http::guestinfo_path(&a.id, a.key.as_deref());
    let write = |s: &str| {
        io::stdout()
            .lock()
            .write_all(s.as_bytes())
            .map_err(|e| format!("stdout: {}", os_error(&e)))
    };
    match (a.key, a.value) {
        (None, _) => {
            let vars: Guestinfo = ctx.client.get(&path).map_err(err)?;
            if ctx.json {
                return ctx.print_json(&vars);
            }
            write(&vmctl::guestinfo::format_listing(&vars))
        }
        (Some(_), None) => {
            let v: GuestinfoValue = ctx.client.get(&path).map_err(err)?;
            if ctx.json {
                return ctx.print_json(&v);
            }
            // The guest's text goes to a terminal only escaped.
            if io::IsTerminal::is_terminal(&io::stdout()) {
                write(&format!("{}\n", escape(&v.value)))
            } else {
                write(&format!("{}\n", v.value))
            }
        }
        (Some(key), Some(value)) => {
            let v: GuestinfoValue = ctx
                .client
                .put(&path, &GuestinfoValue { value })
                .map_err(err)?;
            if ctx.json {
                return ctx.print_json(&v);
            }
            ctx.say(format!("vm {}: set guestinfo {key}", a.id));
            Ok(())
        }
    }
}

fn create(ctx: &Ctx, a: CreateArgs) -> Result<()> {
    let label = create::image_format(&a.disk).1.to_owned();
    let made = match create::create(&a, &mut create::Bar::new(&label)) {
        Ok(m) => m,
        Err(create::CreateError::Failed(msg)) => return Err(msg),
        Err(create::CreateError::Usage(msg)) => {
            let mut cmd = Cli::command();
            cmd.build();
            cmd.find_subcommand_mut("create")
                .expect("create is a command")
                .error(clap::error::ErrorKind::MissingRequiredArgument, msg)
                .exit();
        }
    };
    if ctx.json {
        ctx.print_json(&serde_json::json!({
            "path": made.path,
            "format": made.format.name(),
            "size": made.size,
            "base": made.base,
            "input": a.input,
        }))?;
    } else {
        // As OpenBSD's vmctl says.
        eprintln!("vmctl: {} imagefile created", made.format);
    }
    Ok(())
}
