//! The init role: what `appliance` does as PID 1 of the image (`/init` is the `appliance`
//! binary). It mounts the pseudo file systems, loads the kernel modules shipped in the
//! initramfs, merges the configuration (kernel command line, then the configuration
//! partition), quiets kernel messages on the serial console and runs `appliance serve` as a
//! child, restarting it with back-off when it dies. The serve process asks for a reboot or a
//! power-off by exiting with [`EXIT_REBOOT`] or [`EXIT_POWEROFF`].
//!
//! The same sub-command, given `--store`, edits a configuration store offline (used by
//! `image/build --set` to bake settings into an image).
pub mod config;
pub mod sys;

use config::{BootConfig, ConfigStore};
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Exit code with which `appliance serve` asks the init to reboot the machine.
pub const EXIT_REBOOT: i32 = 10;
/// Set by the init in serve's environment.
pub const SUPERVISED_ENV: &str = "APPLIANCE_SUPERVISED";
/// Exit code with which `appliance serve` asks the init to power the machine off.
pub const EXIT_POWEROFF: i32 = 11;

/// How long the init waits for the configuration partition and the media device to appear
/// (disk drivers probe asynchronously).
const DEVICE_WAIT: Duration = Duration::from_secs(3);
/// A serve process that ran this long resets the restart back-off.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Do not run as PID 1: show or edit the configuration store at PATH (the configuration
    /// partition, or `IMAGE@OFFSET` for the partition inside a disk image at byte OFFSET).
    #[arg(long, value_name = "PATH[@OFFSET]")]
    pub store: Option<String>,
    /// With --store: settings to write, each `KEY=VALUE` (an empty VALUE removes KEY).
    /// Without any, the stored settings are printed.
    #[arg(value_name = "KEY=VALUE", requires = "store")]
    pub set: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("`appliance init` runs only as PID 1 of the image (this is PID {0}); use --store to edit a configuration")]
    NotPid1(u32),
    #[error("bad setting {0:?}: expected KEY=VALUE")]
    BadSetting(String),
    #[error("bad --store {0:?}: expected PATH or PATH@OFFSET")]
    BadStore(String),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}

/// The process arguments, rewritten to `appliance init` when the binary runs as `/init`
/// (`argv[0]` ends in "init"). The kernel may pass stray boot words as arguments; they are
/// dropped, since the init reads /proc/cmdline itself.
pub fn command_line_args() -> Vec<OsString> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let as_init = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n.to_string_lossy().ends_with("init"));
    if as_init {
        vec!["appliance".into(), "init".into()]
    } else {
        args
    }
}

/// Entry point of `appliance init`. As PID 1 it never returns.
pub fn main(args: InitArgs) -> Result<(), InitError> {
    if let Some(store) = &args.store {
        return edit_store(store, &args.set);
    }
    let pid = std::process::id();
    if pid != 1 {
        return Err(InitError::NotPid1(pid));
    }
    run_as_pid1()
}

fn edit_store(spec: &str, settings: &[String]) -> Result<(), InitError> {
    let (path, offset) = match spec.rsplit_once('@') {
        Some((p, o)) => (p, o.parse::<u64>().map_err(|_| InitError::BadStore(spec.to_string()))?),
        None => (spec, 0),
    };
    let mut store = ConfigStore::open_at(path, offset)?;
    if settings.is_empty() {
        for (k, v) in store.load()? {
            println!("{k}={v}");
        }
        return Ok(());
    }
    for s in settings {
        let (k, v) = s.split_once('=').ok_or_else(|| InitError::BadSetting(s.clone()))?;
        store.set(k, v)?;
    }
    Ok(())
}

/// Messages of the init: to stderr, which is the console until serve starts and the kernel
/// log (/dev/kmsg) afterwards.
macro_rules! say {
    ($($arg:tt)*) => { eprintln!("appliance-init: [{}] {}", uptime(), format!($($arg)*)) };
}

/// Seconds since the kernel started, as /proc/uptime says ("?" before /proc is mounted).
fn uptime() -> String {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn run_as_pid1() -> ! {
    mount_pseudo_filesystems();
    say!("appliance {} starting as PID 1", env!("CARGO_PKG_VERSION"));
    load_modules();
    let mut backoff = Duration::from_secs(1);
    let mut first = true;
    loop {
        let (cfg, store_path) = read_config(first);
        let args = config::serve_args(&cfg);
        if first {
            say!("starting appliance {}", args.join(" "));
            // From here on the serial line belongs to the management console.
            // log=debug|trace keeps every kernel and appliance log line on the console.
            let level = if matches!(cfg.get("log"), Some("debug" | "trace")) { 8 } else { 1 };
            if let Err(e) = sys::set_console_loglevel(level) {
                say!("cannot set the kernel console log level: {e}");
            }
            if let Err(e) = log_to_kmsg() {
                say!("cannot send logs to /dev/kmsg: {e}");
            }
            first = false;
        }
        take_last_serve_error(); // a line from an earlier run is not this run's reason
        let started = Instant::now();
        let status = run_serve(&args, &cfg, store_path.as_deref());
        let ran = started.elapsed();
        let why = match &status {
            Ok(st) => format!("ended ({st:?}) after {:.1} s", ran.as_secs_f64()),
            Err(e) => format!("could not start ({e})"),
        };
        let forwarded = INIT_LINES_FORWARDED.load(Ordering::Acquire);
        say!("appliance serve {why}");
        // serve's last lines are ahead of that one in the kmsg pipe: once the thread has
        // forwarded it, serve's error (if any) has been noted.
        let deadline = Instant::now() + Duration::from_millis(500);
        while INIT_LINES_FORWARDED.load(Ordering::Acquire) == forwarded && Instant::now() < deadline && kmsg_forwarding() {
            std::thread::sleep(Duration::from_millis(5));
        }
        match after_serve(status.ok(), ran, backoff) {
            Next::Power(action) => {
                say!("{action:?} requested");
                let err = sys::power(action);
                say!("{action:?} failed: {err}; restarting appliance serve");
            }
            Next::Restart(delay) => {
                say!("restarting appliance serve in {} s", delay.as_secs());
                // The operator's only view is the serial line, which the kernel log no longer
                // reaches: say there why nothing answers.
                let last = take_last_serve_error();
                let detail = if last.is_empty() { String::new() } else { format!(": {last}") };
                tell_console(
                    cfg.get("console"),
                    &format!("appliance serve {why}{detail}; restarting in {} s", delay.as_secs()),
                );
                std::thread::sleep(delay);
                backoff = (delay * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The last `error:` line serve wrote (its fatal error), kept by the kmsg thread for
/// [`tell_console`]; emptied when taken.
static LAST_SERVE_ERROR: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// Lines of the init itself the kmsg thread has forwarded (see [`run_as_pid1`]).
static INIT_LINES_FORWARDED: AtomicU64 = AtomicU64::new(0);
static KMSG_FORWARDING: AtomicBool = AtomicBool::new(false);

fn kmsg_forwarding() -> bool {
    KMSG_FORWARDING.load(Ordering::Acquire)
}

fn take_last_serve_error() -> String {
    LAST_SERVE_ERROR.lock().map(|mut e| std::mem::take(&mut *e)).unwrap_or_default()
}

/// Keeps serve's fatal error for [`tell_console`]: an `error:` line and the lines right after
/// it up to a blank one (clap lists the missing or bad arguments there), bounded in length.
fn note_serve_error(line: &[u8], in_error: &mut bool) {
    const MAX: usize = 300;
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    let Ok(mut last) = LAST_SERVE_ERROR.lock() else { return };
    if let Some(err) = text.strip_prefix("error: ") {
        *last = err.chars().take(MAX).collect();
        *in_error = true;
    } else if *in_error && !text.is_empty() && last.len() < MAX {
        last.push(' ');
        let room = MAX.saturating_sub(last.len());
        last.extend(text.chars().take(room));
    } else {
        *in_error = false;
    }
}

/// One init message written straight to the console device (the kernel log stays off it),
/// without blocking on a serial line that is not draining and without making it our
/// controlling terminal.
fn tell_console(console: Option<&str>, msg: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = console.filter(|p| p.starts_with("/dev/")).unwrap_or("/dev/console");
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path);
    if let Ok(mut tty) = opened {
        let _ = writeln!(tty, "\nappliance-init: [{}] {msg}", uptime());
    }
}

/// From now on our stdout and stderr (inherited by serve) go through a pipe to the kernel
/// log, one record a line, so the serial console carries only the management console.
fn log_to_kmsg() -> std::io::Result<()> {
    use std::io::{BufRead, Write};
    let kmsg = std::fs::OpenOptions::new().write(true).open("/dev/kmsg")?;
    let (reader, writer) = std::io::pipe()?;
    sys::redirect(&writer, &[1, 2])?;
    let null = std::fs::File::open("/dev/null")?;
    sys::redirect(&null, &[0])?;
    std::thread::Builder::new().name("kmsg".into()).spawn(move || {
        let mut reader = std::io::BufReader::new(reader);
        let mut line = Vec::with_capacity(1024);
        let mut in_error = false;
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => {
                    KMSG_FORWARDING.store(false, Ordering::Release);
                    return;
                }
                Ok(_) => {
                    if line.last() != Some(&b'\n') {
                        line.push(b'\n');
                    }
                    note_serve_error(&line, &mut in_error);
                    if line.starts_with(b"appliance-init:") {
                        INIT_LINES_FORWARDED.fetch_add(1, Ordering::Release);
                    }
                    // One write is one kernel log record.
                    let _ = (&kmsg).write_all(&line);
                }
            }
        }
    })?;
    KMSG_FORWARDING.store(true, Ordering::Release);
    Ok(())
}

/// What the init does once serve has ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Power(sys::PowerAction),
    /// Start serve again after this delay.
    Restart(Duration),
}

/// Maps serve's end (None: it could not be started) to the next step: the power exit codes
/// reboot or power off; anything else restarts after `backoff`, or after 1 s when serve
/// had run long enough to count as healthy.
pub fn after_serve(status: Option<sys::ExitStatus>, ran: Duration, backoff: Duration) -> Next {
    match status {
        Some(sys::ExitStatus::Code(EXIT_REBOOT)) => Next::Power(sys::PowerAction::Reboot),
        Some(sys::ExitStatus::Code(EXIT_POWEROFF)) => Next::Power(sys::PowerAction::PowerOff),
        _ if ran >= HEALTHY_RUN => Next::Restart(Duration::from_secs(1)),
        _ => Next::Restart(backoff.clamp(Duration::from_secs(1), MAX_BACKOFF)),
    }
}


fn mount_pseudo_filesystems() {
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    for (src, dir, fs, flags, data) in [
        ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
        ("proc", "/proc", "proc", nosuid, ""),
        ("sysfs", "/sys", "sysfs", nosuid, ""),
        ("tmpfs", "/run", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, "mode=0755"),
        ("tmpfs", "/tmp", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, "mode=1777"),
        ("hugetlbfs", "/dev/hugepages", "hugetlbfs", libc::MS_NOSUID | libc::MS_NODEV, ""),
    ] {
        let _ = std::fs::create_dir_all(dir);
        let result = sys::mount(src, dir, fs, flags, data);
        if dir == "/dev" {
            // The initramfs has no /dev/console: take the console now that devtmpfs is there.
            if let Ok(console) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/console") {
                let _ = sys::redirect(&console, &[0, 1, 2]);
            }
        }
        if let Err(e) = result {
            if e.raw_os_error() != Some(libc::EBUSY) {
                say!("mount {fs} on {dir}: {e}");
            }
        }
    }
}

/// Modules loaded whatever the hardware: userspace drivers (vfio), the SCSI disk driver that
/// AHCI and USB storage need (the kernel cannot load it itself: there is no modprobe), kTLS.
const ALWAYS_LOAD: &[&str] = &["vfio_pci", "vfio_iommu_type1", "sd_mod", "tls"];
/// Drivers whose probe can take long (link training, PHY resets, port scans): loaded with the
/// kernel's generic `async_probe` parameter so that the boot does not wait for them; the
/// disks they bring are waited for where they are needed.
const ASYNC_PROBE: &[&str] = &["ahci", "xhci_pci", "ehci_pci", "e1000e", "igb", "ixgbe", "i40e", "ice"];

/// Loads the shipped modules that the machine's devices ask for (their `modalias` matched
/// against modules.alias, as udev would) plus [`ALWAYS_LOAD`], dependencies first, repeating
/// while loading a module makes new devices appear (virtio_pci -> virtio devices).
/// Failures are reported and do not stop the boot.
fn load_modules() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = PathBuf::from("/lib/modules").join(release.trim());
    let deps = match std::fs::read_to_string(dir.join("modules.dep")) {
        Ok(text) => parse_modules_dep(&text),
        Err(e) => {
            say!("no modules.dep in {}: {e}", dir.display());
            return;
        }
    };
    let aliases = parse_modules_alias(&std::fs::read_to_string(dir.join("modules.alias")).unwrap_or_default());
    let started = Instant::now();
    let (mut loaded, mut failed) = (0, 0);
    let mut done: HashSet<String> = HashSet::new();
    for round in 0..4 {
        let mut wanted: Vec<String> = device_modaliases()
            .iter()
            .flat_map(|alias| modules_for_alias(&aliases, alias))
            .collect();
        if round == 0 {
            wanted.extend(ALWAYS_LOAD.iter().map(|m| m.to_string()));
        }
        let paths = modules_to_load(&deps, &wanted, &mut done);
        if paths.is_empty() {
            break;
        }
        // Modules of one level depend only on earlier levels: load each level in parallel.
        for level in load_levels(&deps, &paths) {
            let results: Vec<(String, std::io::Result<()>, Duration)> = std::thread::scope(|scope| {
                let handles: Vec<_> = level
                    .iter()
                    .map(|path| {
                        let dir = &dir;
                        scope.spawn(move || {
                            let t = Instant::now();
                            let params = if ASYNC_PROBE.contains(&module_name(path).as_str()) { "async_probe=1" } else { "" };
                            (path.clone(), sys::load_module(&dir.join(path), params), t.elapsed())
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .filter_map(|h| h.join().ok())
                    .collect()
            });
            for (path, result, took) in results {
                match result {
                    Ok(()) => {
                        loaded += 1;
                        if took > Duration::from_millis(1500) {
                            say!("module {path} took {} ms", took.as_millis());
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => {
                        failed += 1;
                        say!("module {path}: {e}");
                    }
                }
            }
        }
    }
    say!("{loaded} modules loaded, {failed} failed, in {} ms", started.elapsed().as_millis());
}

/// Every `modalias` of a device the kernel knows, from /sys/bus/*/devices/*/modalias.
fn device_modaliases() -> Vec<String> {
    let mut out = Vec::new();
    for bus in std::fs::read_dir("/sys/bus").into_iter().flatten().flatten() {
        for dev in std::fs::read_dir(bus.path().join("devices")).into_iter().flatten().flatten() {
            if let Ok(a) = std::fs::read_to_string(dev.path().join("modalias")) {
                out.push(a.trim().to_string());
            }
        }
    }
    out
}

/// modules.alias: `alias <glob> <module name>`.
pub fn parse_modules_alias(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("alias"), Some(pat), Some(module)) => Some((pat.to_string(), module.to_string())),
                _ => None,
            }
        })
        .collect()
}

fn modules_for_alias<'a>(aliases: &'a [(String, String)], alias: &'a str) -> impl Iterator<Item = String> + 'a {
    aliases.iter().filter(move |(pat, _)| glob_match(pat.as_bytes(), alias.as_bytes())).map(|(_, m)| m.clone())
}

/// fnmatch(3) without flags: `*`, `?` and `[...]` classes (with ranges and `!`/`^`).
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() {
            match pat[p] {
                b'*' => {
                    star = Some((p, i));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(&pat[p..], s[i]) {
                        if matched {
                            p += next;
                            i += 1;
                            continue;
                        }
                    } else if s[i] == b'[' {
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
                c if c == s[i] => {
                    p += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, si)) => {
                p = sp + 1;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class at the start of `pat` ("[...]"): (matched, class length), or
/// None when the class is not closed.
fn class_match(pat: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut j = 1;
    let negate = matches!(pat.get(1), Some(b'!' | b'^'));
    if negate {
        j += 1;
    }
    let mut matched = false;
    let mut first = true;
    while j < pat.len() {
        if pat[j] == b']' && !first {
            return Some((matched != negate, j + 1));
        }
        first = false;
        if j + 2 < pat.len() && pat[j + 1] == b'-' && pat[j + 2] != b']' {
            matched |= pat[j] <= c && c <= pat[j + 2];
            j += 3;
        } else {
            matched |= pat[j] == c;
            j += 1;
        }
    }
    None
}

/// Splits `paths` (in load order) into levels: a module's level is one more than the highest
/// level of its dependencies among `paths`.
pub fn load_levels(deps: &BTreeMap<String, Vec<String>>, paths: &[String]) -> Vec<Vec<String>> {
    let mut level_of: BTreeMap<&str, usize> = BTreeMap::new();
    let mut levels: Vec<Vec<String>> = Vec::new();
    for p in paths {
        let level = deps
            .get(p)
            .into_iter()
            .flatten()
            .filter_map(|d| level_of.get(d.as_str()).map(|l| l + 1))
            .max()
            .unwrap_or(0);
        level_of.insert(p, level);
        if levels.len() <= level {
            levels.resize(level + 1, Vec::new());
        }
        levels[level].push(p.clone());
    }
    levels
}

/// The module name of a modules.dep path: basename without `.ko`, '-' read as '_'.
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.trim_end_matches(".ko").replace('-', "_")
}

/// The paths to load (dependencies first) for the `wanted` module names not yet in `done`.
pub fn modules_to_load(deps: &BTreeMap<String, Vec<String>>, wanted: &[String], done: &mut HashSet<String>) -> Vec<String> {
    let by_name: BTreeMap<String, &String> = deps.keys().map(|p| (module_name(p), p)).collect();
    let mut subset = BTreeMap::new();
    for name in wanted {
        let Some(path) = by_name.get(&name.replace('-', "_")) else { continue };
        for p in std::iter::once(*path).chain(deps[*path].iter()) {
            if !done.contains(p) {
                subset.insert(p.clone(), deps.get(p).cloned().unwrap_or_default());
            }
        }
    }
    let order = load_order(&subset);
    done.extend(order.iter().cloned());
    order
}

/// modules.dep: `path.ko: dep1.ko dep2.ko` (dependencies in the order modprobe unloads them).
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, deps)| (m.trim().to_string(), deps.split_whitespace().map(str::to_string).collect()))
        .filter(|(m, _)| !m.is_empty())
        .collect()
}

/// Every module once, each after all it depends on.
pub fn load_order(deps: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    fn visit(m: &str, deps: &BTreeMap<String, Vec<String>>, seen: &mut HashSet<String>, out: &mut Vec<String>) {
        if !seen.insert(m.to_string()) {
            return;
        }
        for d in deps.get(m).into_iter().flatten().rev() {
            visit(d, deps, seen, out);
        }
        out.push(m.to_string());
    }
    let (mut seen, mut out) = (HashSet::new(), Vec::new());
    for m in deps.keys() {
        visit(m, deps, &mut seen, &mut out);
    }
    out
}

/// The merged configuration and the store it came from. On the first call, waits a little
/// for the configuration partition and the media device to appear.
fn read_config(first: bool) -> (BootConfig, Option<PathBuf>) {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mut cfg = BootConfig::from_cmdline(&cmdline);
    let start = Instant::now();
    let deadline = start + if first { DEVICE_WAIT } else { Duration::ZERO };
    let store = loop {
        match ConfigStore::locate() {
            Ok(Some(s)) => break Some(s),
            // Disks probe asynchronously; give up early on a machine that has none (PXE).
            Ok(None) if start.elapsed() > Duration::from_secs(1) && !any_disk() => break None,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => break None,
            Err(e) => {
                say!("configuration partition: {e}");
                break None;
            }
        }
    };
    let store_path = store.as_ref().map(|s| s.path().to_path_buf());
    match store.as_ref().map(ConfigStore::load) {
        Some(Ok(pairs)) => cfg.overlay(&pairs, "partition"),
        Some(Err(e)) => say!("configuration partition: {e}"),
        None => {}
    }
    // The data drive: by default the first NVMe controller (not the one holding the
    // configuration partition) goes to the userspace driver; the kernel's block device
    // stays the way when vfio cannot have it, and when configured explicitly.
    let nvme = nvme_controllers();
    // media may list several volumes, one per drive (comma-separated).
    let items: Vec<String> = cfg.get("media").map(|m| m.split(',').map(|i| i.trim().to_string()).collect()).unwrap_or_default();
    let nvme_specs: Vec<String> = items.iter().filter_map(|m| m.strip_prefix("nvme:")).map(str::to_string).collect();
    if cfg.get("media").is_none() && !nvme.is_empty() {
        match prepare_userspace_nvme("auto", &nvme, store_path.as_deref(), deadline, &[]) {
            Ok(_) => {
                let _ = cfg.apply("media", "nvme:auto", "default");
            }
            Err(e) => {
                say!("NVMe: not for the userspace driver ({e}); using the kernel's block device");
                if wait_for(Path::new("/dev/nvme0n1"), deadline) {
                    let _ = cfg.apply("media", "/dev/nvme0n1", "default");
                }
            }
        }
    } else if !nvme_specs.is_empty() {
        // The controllers named first, so that nvme:auto (each one) takes another, as serve does.
        let mut taken: Vec<String> =
            nvme_specs.iter().filter(|s| *s != "auto").filter_map(|s| drivers::storage::nvme::vfio::normalize_pci_address(s)).collect();
        let mut ordered: Vec<&String> = nvme_specs.iter().filter(|s| *s != "auto").collect();
        ordered.extend(nvme_specs.iter().filter(|s| *s == "auto"));
        for spec in ordered {
            // serve reports the reason too, and the init restarts it.
            match prepare_userspace_nvme(spec, &nvme, store_path.as_deref(), deadline, &taken) {
                Ok(pci) if spec == "auto" => taken.push(pci),
                Ok(_) => {}
                Err(e) => say!("media nvme:{spec}: {e}"),
            }
        }
    }
    for media in items.iter().filter(|m| m.starts_with("/dev/")) {
        wait_for(Path::new(media), Instant::now() + if first { DEVICE_WAIT } else { Duration::ZERO });
    }
    if cfg.get("nic") == Some("dpdk") {
        prepare_dpdk(&mut cfg, deadline, first);
    }
    if first {
        match &store_path {
            Some(p) => say!("configuration partition {}", p.display()),
            None => say!("no configuration partition (settings from the kernel command line only)"),
        }
        for (k, v, src) in cfg.entries() {
            say!("config {k}={v} ({src})");
        }
        for r in &cfg.rejected {
            say!("config ignored: {r}");
        }
    }
    (cfg, store_path)
}

/// PCI addresses of the NVMe controllers (class 01:08:02), sorted.
fn nvme_controllers() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/sys/bus/pci/devices")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path().join("class")).is_ok_and(|c| c.trim() == "0x010802"))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// Whether the block device at `dev` (e.g. /dev/nvme0n1p2) sits on the PCI device `pci`.
fn block_device_on(dev: &Path, pci: &str) -> bool {
    let Some(name) = dev.file_name() else { return false };
    std::fs::canonicalize(Path::new("/sys/class/block").join(name))
        .is_ok_and(|p| p.components().any(|c| c.as_os_str() == std::ffi::OsStr::new(pci)))
}

/// Chooses the controller that `nvme:<spec>` means ("auto": the first of `controllers` that
/// does not hold the configuration partition `store` and is not in `taken`) and binds it to
/// vfio-pci for serve, taking it from the kernel's nvme driver: as PID 1 of the appliance,
/// nothing else uses it. Returns its PCI address.
fn prepare_userspace_nvme(spec: &str, controllers: &[String], store: Option<&Path>, deadline: Instant, taken: &[String]) -> Result<String, String> {
    use drivers::storage::nvme::vfio;
    let holds_store = |pci: &str| store.is_some_and(|s| block_device_on(s, pci));
    let pci = if spec == "auto" {
        let pci = controllers
            .iter()
            .find(|p| !holds_store(p) && !taken.contains(p))
            .ok_or("no NVMe controller left (another media item took it, or it holds the configuration partition)")?;
        pci.clone()
    } else {
        let pci = vfio::check_pci_address(spec).map_err(|e| e.to_string())?;
        vfio::check_nvme_class(&pci).map_err(|e| e.to_string())?;
        if holds_store(&pci) {
            return Err(format!("{pci} holds the configuration partition"));
        }
        pci
    };
    if let Some(driver) = bind_to_vfio(&pci, deadline)? {
        say!("NVMe {pci}: taken from {driver} and bound to vfio-pci for the userspace driver");
    }
    Ok(pci)
}

/// 2 MiB hugepages the init reserves for DPDK (with `nic=dpdk`) when none are reserved
/// (a `hugepages=N` on the kernel command line wins): 128 MiB, for the mbuf pool (8191
/// mbufs, about 20 MiB), the PMD's rings and EAL's heap.
pub const DPDK_HUGEPAGES: u64 = 64;

/// Gets the machine ready for `nic=dpdk`: reserves hugepages, binds the data NIC to vfio-pci
/// and completes the EAL arguments ([`dpdk_eal_args`]), which replace `dpdk_args` in `cfg`
/// (source "init"). The data NIC is the one `dpdk_args` names with `-a`/`--allow`; when
/// `dpdk_args` selects no device (no `-a`, `--allow`, `--vdev` or `--no-pci`), the last
/// Ethernet controller in PCI address order ([`data_nic_auto`]), which `-a` then names.
fn prepare_dpdk(cfg: &mut BootConfig, deadline: Instant, first: bool) {
    let given = cfg.get("dpdk_args").unwrap_or("").to_string();
    let mut auto = None;
    let mut bind: Vec<String> = dpdk_allowed(&given);
    if !dpdk_selects_devices(&given) {
        match data_nic_auto(&ethernet_controllers()) {
            Some(pci) => {
                bind.push(pci.clone());
                auto = Some(pci);
            }
            None => say!("DPDK: no Ethernet controller on the PCI bus for the data NIC"),
        }
    }
    for pci in &bind {
        match bind_to_vfio(pci, deadline) {
            Ok(Some(driver)) if first => say!("DPDK data NIC {pci}: taken from {driver} and bound to vfio-pci"),
            Ok(_) => {}
            // serve (EAL) reports it too, and the init restarts it.
            Err(e) => say!("DPDK data NIC {pci}: {e}"),
        }
    }
    let hugepages = reserve_hugepages(DPDK_HUGEPAGES, first);
    let args = dpdk_eal_args(&given, auto.as_deref(), hugepages);
    if let Err(e) = cfg.apply("dpdk_args", &args, "init") {
        say!("DPDK: {e}");
    }
}

/// Binds the PCI device `pci` (the NVMe drive, the DPDK data NIC) to vfio-pci. The kernel's
/// driver probes asynchronously: its probe is let finish first. Returns the driver it was
/// taken from, None when it was already there.
fn bind_to_vfio(pci: &str, deadline: Instant) -> Result<Option<String>, String> {
    use drivers::storage::nvme::vfio;
    let pci = vfio::check_pci_address(pci).map_err(|e| e.to_string())?;
    if vfio::current_driver(&pci).as_deref() == Some("vfio-pci") {
        return Ok(None);
    }
    wait_for(&Path::new("/sys/bus/pci/devices").join(&pci).join("driver"), deadline);
    let driver = vfio::current_driver(&pci);
    let mut result = vfio::bind_to_vfio_pci(&pci);
    if result.is_err() && vfio::current_driver(&pci).as_deref() != Some("vfio-pci") {
        // A probe that raced with the unbind: once more.
        std::thread::sleep(Duration::from_millis(200));
        result = vfio::bind_to_vfio_pci(&pci);
    }
    result.map_err(|e| e.to_string())?;
    Ok(Some(driver.unwrap_or_else(|| "no driver".into())))
}

/// Makes sure at least `pages` default-size hugepages are reserved (vm.nr_hugepages), unless
/// some already are. Returns whether any are.
fn reserve_hugepages(pages: u64, first: bool) -> bool {
    const NR: &str = "/proc/sys/vm/nr_hugepages";
    let read = || std::fs::read_to_string(NR).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
    let before = read();
    if before == 0 {
        if let Err(e) = std::fs::write(NR, pages.to_string()) {
            say!("DPDK: cannot reserve hugepages ({NR}): {e}");
        }
    }
    let now = read();
    if first {
        let size = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m.lines().find(|l| l.starts_with("Hugepagesize:")).map(|l| l["Hugepagesize:".len()..].trim().to_string()))
            .unwrap_or_else(|| "?".into());
        if now == 0 {
            say!("DPDK: no hugepages could be reserved: EAL runs with --no-huge");
        } else {
            say!("DPDK: {now} hugepages of {size} reserved{}, hugetlbfs on /dev/hugepages", if before > 0 { " (kernel command line)" } else { "" });
        }
    }
    now > 0
}

/// PCI addresses of the Ethernet controllers (class 02:00:xx), sorted.
fn ethernet_controllers() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/sys/bus/pci/devices")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path().join("class")).is_ok_and(|c| c.trim().starts_with("0x0200")))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// The data NIC when none is named: the last of `controllers` (sorted PCI addresses). A
/// machine with a management NIC on the board and the data NIC in a slot, and image/qemu's
/// `--data-nic` (added after the first NIC, at 00:10.0), have it last.
pub fn data_nic_auto(controllers: &[String]) -> Option<String> {
    controllers.last().cloned()
}

/// The words of EAL arguments (whitespace-split: enough to find options; the arguments are
/// passed on as written).
fn eal_words(args: &str) -> Vec<&str> {
    args.split_whitespace().map(|w| w.trim_matches(|c| c == '\'' || c == '"')).collect()
}

/// The PCI addresses that `-a`/`--allow`/`-w` name in EAL arguments (device arguments after
/// a comma dropped).
pub fn dpdk_allowed(args: &str) -> Vec<String> {
    let words = eal_words(args);
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        let value = match w {
            "-a" | "--allow" | "-w" | "--pci-whitelist" => {
                i += 1;
                words.get(i).copied()
            }
            _ => w
                .strip_prefix("--allow=")
                .or_else(|| w.strip_prefix("--pci-whitelist="))
                .or_else(|| w.strip_prefix("-a").filter(|v| !v.is_empty()))
                .or_else(|| w.strip_prefix("-w").filter(|v| !v.is_empty())),
        };
        if let Some(v) = value {
            out.push(v.split(',').next().unwrap_or(v).to_string());
        }
        i += 1;
    }
    out
}

/// Whether EAL arguments choose the devices themselves: an allow list, a virtual device or
/// no PCI bus at all.
pub fn dpdk_selects_devices(args: &str) -> bool {
    !dpdk_allowed(args).is_empty()
        || eal_words(args).iter().any(|w| *w == "--vdev" || w.starts_with("--vdev=") || *w == "--no-pci")
}

/// The EAL arguments serve gets in the image: `-a <data NIC>` when the init chose it, then
/// what the appliance needs unless `given` says otherwise: `--in-memory` (no files under
/// /var/run, one process), `--iova-mode=va` (DMA addresses are virtual addresses, mapped by
/// vfio through the IOMMU: the virtio PMD behind QEMU's vIOMMU works only so),
/// `--no-telemetry`, and `--no-huge -m 128` when no hugepages are reserved; then `given`.
pub fn dpdk_eal_args(given: &str, auto_nic: Option<&str>, hugepages: bool) -> String {
    let words = eal_words(given);
    let has = |opt: &str| words.iter().any(|w| *w == opt || w.starts_with(&format!("{opt}=")));
    let mut out: Vec<String> = Vec::new();
    if let Some(pci) = auto_nic {
        out.push(format!("-a {pci}"));
    }
    if !has("--in-memory") && !has("--no-shconf") && !has("--file-prefix") {
        out.push("--in-memory".into());
    }
    if !has("--iova-mode") {
        out.push("--iova-mode=va".into());
    }
    if !has("--no-telemetry") && !has("--telemetry") {
        out.push("--no-telemetry".into());
    }
    if !hugepages && !has("--no-huge") {
        out.push("--no-huge -m 128".into());
    }
    if !given.trim().is_empty() {
        out.push(given.trim().to_string());
    }
    out.join(" ")
}

/// Whether the kernel knows a disk (not a loop, RAM or optical device).
fn any_disk() -> bool {
    std::fs::read_dir("/sys/class/block").into_iter().flatten().flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        !["loop", "ram", "sr", "zram"].iter().any(|p| name.starts_with(p))
    })
}

fn wait_for(path: &Path, deadline: Instant) -> bool {
    loop {
        if path.exists() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `appliance serve` once and waits for it, reaping any other child meanwhile.
fn run_serve(args: &[String], cfg: &BootConfig, store: Option<&Path>) -> std::io::Result<sys::ExitStatus> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/init"));
    let mut cmd = Command::new(exe);
    // Its own process group: a ^C or break on the serial line signals the init's group
    // (PID 1 ignores signals it has no handler for), never serve.
    cmd.arg0("appliance").args(args).stdin(Stdio::null()).process_group(0);
    // serve answers poweroff with EXIT_POWEROFF (not 0) when it knows an init is watching.
    cmd.env(SUPERVISED_ENV, "1");
    if let Some(level) = cfg.get("log") {
        cmd.env("RUST_LOG", level);
    }
    if let Some(p) = store {
        cmd.env(config::STORE_ENV, p);
    }
    let child = cmd.spawn()?;
    loop {
        let (pid, status) = sys::wait_any()?;
        if pid == child.id() {
            return Ok(status);
        }
    }
}

use std::os::unix::process::CommandExt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_fatal_error_is_kept_with_the_lines_that_explain_it() {
        let mut in_error = false;
        take_last_serve_error();
        for line in [
            "[2026-12-03T18:59:43Z INFO  drivers::nic::dpdk] dpdk: EAL init\n",
            "error: the following required arguments were not provided:\n",
            "  --media <MEDIA>\n",
            "\n",
            "Usage: appliance serve --media <MEDIA>\n",
        ] {
            note_serve_error(line.as_bytes(), &mut in_error);
        }
        assert_eq!(take_last_serve_error(), "the following required arguments were not provided: --media <MEDIA>");
        assert_eq!(take_last_serve_error(), "", "taken once");
        let long = format!("error: {}\n", "x".repeat(1000));
        note_serve_error(long.as_bytes(), &mut in_error);
        note_serve_error(b"more\n", &mut in_error);
        assert_eq!(take_last_serve_error().len(), 300);
    }

    #[test]
    fn modules_load_after_their_dependencies() {
        let deps = parse_modules_dep(
            "kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko kernel/drivers/vfio/vfio.ko kernel/virt/lib/irqbypass.ko\n\
             kernel/drivers/vfio/pci/vfio-pci-core.ko: kernel/drivers/vfio/vfio.ko kernel/virt/lib/irqbypass.ko\n\
             kernel/drivers/vfio/vfio.ko:\n\
             kernel/virt/lib/irqbypass.ko:\n\
             kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n\
             kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
             kernel/net/core/failover.ko:\n\
             garbage line without colon\n",
        );
        assert_eq!(deps.len(), 7);
        let order = load_order(&deps);
        assert_eq!(order.len(), 7);
        let pos = |m: &str| order.iter().position(|x| x.ends_with(m)).unwrap();
        assert!(pos("irqbypass.ko") < pos("vfio-pci-core.ko"));
        assert!(pos("vfio.ko") < pos("vfio-pci-core.ko"));
        assert!(pos("vfio-pci-core.ko") < pos("vfio-pci.ko"));
        assert!(pos("failover.ko") < pos("net_failover.ko"));
        assert!(pos("net_failover.ko") < pos("virtio_net.ko"));
    }

    #[test]
    fn globs_match_like_fnmatch() {
        assert!(glob_match(b"pci:v00001AF4d00001041sv*sd*bc*sc*i*", b"pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00"));
        assert!(!glob_match(b"pci:v00001AF4d00001041sv*sd*bc*sc*i*", b"pci:v00001AF4d00001042sv00001AF4sd00001100bc02sc00i00"));
        assert!(glob_match(b"virtio:d00000001v*", b"virtio:d00000001v00001AF4"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(glob_match(b"usb:v*p*d*dc*dsc*dp*ic08isc0[1-6]ip50in*", b"usb:v0781p5567d0100dc00dsc00dp00ic08isc06ip50in00"));
        assert!(!glob_match(b"x[!0-9]", b"x5"));
        assert!(glob_match(b"x[!0-9]", b"xa"));
        assert!(glob_match(b"*", b""));
        assert!(!glob_match(b"abc", b"abcd"));
        assert!(glob_match(b"a*b*c", b"a-b-b-c"));
    }

    #[test]
    fn only_wanted_modules_and_their_dependencies_load_once() {
        let deps = parse_modules_dep(
            "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n\
             kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
             kernel/net/core/failover.ko:\n\
             kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/vfio.ko\n\
             kernel/drivers/vfio/vfio.ko:\n\
             kernel/drivers/ata/ahci.ko:\n",
        );
        let aliases = parse_modules_alias("# comment\nalias virtio:d00000001v* virtio_net\nalias pci:v00008086d00002922sv*sd*bc*sc*i* ahci\n");
        let wanted: Vec<String> = modules_for_alias(&aliases, "virtio:d00000001v00001AF4").chain(["vfio_pci".to_string()]).collect();
        let mut done = HashSet::new();
        let order = modules_to_load(&deps, &wanted, &mut done);
        assert_eq!(
            order,
            [
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko",
                "kernel/drivers/vfio/vfio.ko",
                "kernel/drivers/vfio/pci/vfio-pci.ko"
            ]
        );
        assert_eq!(
            load_levels(&deps, &order),
            vec![
                vec!["kernel/net/core/failover.ko".to_string(), "kernel/drivers/vfio/vfio.ko".to_string()],
                vec!["kernel/drivers/net/net_failover.ko".to_string(), "kernel/drivers/vfio/pci/vfio-pci.ko".to_string()],
                vec!["kernel/drivers/net/virtio_net.ko".to_string()],
            ]
        );
        assert!(modules_to_load(&deps, &wanted, &mut done).is_empty(), "nothing loads twice");
        assert!(modules_to_load(&deps, &["nosuch".into()], &mut done).is_empty());
    }

    #[test]
    fn serve_exit_codes_map_to_power_actions_and_back_off() {
        use sys::{ExitStatus::*, PowerAction::*};
        let s = Duration::from_secs;
        assert_eq!(after_serve(Some(Code(EXIT_REBOOT)), s(0), s(1)), Next::Power(Reboot));
        assert_eq!(after_serve(Some(Code(EXIT_POWEROFF)), s(500), s(8)), Next::Power(PowerOff));
        assert_eq!(after_serve(Some(Code(2)), s(0), s(4)), Next::Restart(s(4)));
        assert_eq!(after_serve(Some(Signal(9)), s(0), s(120)), Next::Restart(MAX_BACKOFF));
        assert_eq!(after_serve(None, s(0), s(0)), Next::Restart(s(1)));
        assert_eq!(after_serve(Some(Code(0)), HEALTHY_RUN, s(16)), Next::Restart(s(1)), "a healthy run resets the back-off");
    }

    #[test]
    fn init_refuses_to_run_outside_pid1() {
        let err = main(InitArgs { store: None, set: vec![] }).unwrap_err();
        assert!(matches!(err, InitError::NotPid1(_)));
    }

    #[test]
    fn store_is_edited_offline() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let spec = format!("{}@{}", f.path().display(), 4096);
        edit_store(&spec, &["appliance.ip=10.9.8.7/16".into(), "log=debug".into()]).unwrap();
        let s = ConfigStore::open_at(f.path(), 4096).unwrap();
        assert_eq!(s.load().unwrap().len(), 2);
        assert!(matches!(edit_store(&spec, &["nokey".into()]), Err(InitError::BadSetting(_))));
        assert!(matches!(edit_store(&spec, &["ip=bad".into()]), Err(InitError::Config(_))));
        assert!(matches!(edit_store("x@y", &[]), Err(InitError::BadStore(_))));
    }

    #[test]
    fn dpdk_devices_named_in_eal_arguments() {
        assert_eq!(dpdk_allowed("-a 0000:00:10.0 --in-memory"), vec!["0000:00:10.0"]);
        assert_eq!(dpdk_allowed("-a0000:00:03.0,rx_mode=1 --allow=00:04.0 -w 00:05.0"), vec!["0000:00:03.0", "00:04.0", "00:05.0"]);
        assert!(dpdk_allowed("--vdev=net_tap0,iface=x -l 0").is_empty());
        assert!(dpdk_selects_devices("--vdev net_tap0"));
        assert!(dpdk_selects_devices("--no-pci --vdev=net_af_packet0,iface=eth0"));
        assert!(dpdk_selects_devices("-a 0000:00:10.0"));
        assert!(!dpdk_selects_devices("-l 0-1 --log-level=8"));
        assert!(!dpdk_selects_devices(""));
    }

    #[test]
    fn dpdk_eal_arguments_for_the_image() {
        assert_eq!(
            dpdk_eal_args("", Some("0000:00:10.0"), true),
            "-a 0000:00:10.0 --in-memory --iova-mode=va --no-telemetry"
        );
        assert_eq!(
            dpdk_eal_args("--iova-mode=pa -l 0", Some("0000:00:10.0"), false),
            "-a 0000:00:10.0 --in-memory --no-telemetry --no-huge -m 128 --iova-mode=pa -l 0"
        );
        assert_eq!(
            dpdk_eal_args("--no-huge --file-prefix x --vdev=net_tap0", None, false),
            "--iova-mode=va --no-telemetry --no-huge --file-prefix x --vdev=net_tap0"
        );
        assert_eq!(data_nic_auto(&["0000:00:01.0".into(), "0000:00:10.0".into()]).as_deref(), Some("0000:00:10.0"));
        assert_eq!(data_nic_auto(&[]), None);
    }
}
