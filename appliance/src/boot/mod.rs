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
mod sys;

use config::{BootConfig, ConfigStore};
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Exit code with which `appliance serve` asks the init to reboot the machine.
pub const EXIT_REBOOT: i32 = 10;
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
/// (argv[0] ends in "init"). The kernel may pass stray boot words as arguments; they are
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
    ($($arg:tt)*) => { eprintln!("appliance-init: {}", format!($($arg)*)) };
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
            if !matches!(cfg.get("log"), Some("debug" | "trace")) {
                if let Err(e) = sys::set_console_loglevel(1) {
                    say!("cannot quiet kernel console messages: {e}");
                }
            }
            match std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
                Ok(kmsg) => {
                    if let Err(e) = sys::redirect_stdio(&kmsg) {
                        say!("cannot send logs to /dev/kmsg: {e}");
                    }
                }
                Err(e) => say!("cannot open /dev/kmsg: {e}"),
            }
            first = false;
        }
        let started = Instant::now();
        match run_serve(&args, &cfg, store_path.as_deref()) {
            Ok(sys::ExitStatus::Code(EXIT_REBOOT)) => power(sys::PowerAction::Reboot),
            Ok(sys::ExitStatus::Code(EXIT_POWEROFF)) => power(sys::PowerAction::PowerOff),
            Ok(status) => say!("appliance serve ended ({status:?}) after {:.1} s", started.elapsed().as_secs_f64()),
            Err(e) => say!("cannot start appliance serve: {e}"),
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff = Duration::from_secs(1);
        }
        say!("restarting appliance serve in {} s", backoff.as_secs());
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn power(action: sys::PowerAction) {
    say!("{action:?} requested");
    let err = sys::power(action);
    say!("{action:?} failed: {err}");
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
                let _ = sys::redirect_stdio(&console);
            }
        }
        if let Err(e) = result {
            if e.raw_os_error() != Some(libc::EBUSY) {
                say!("mount {fs} on {dir}: {e}");
            }
        }
    }
}

/// Loads every module listed in modules.dep (the initramfs holds only the ones it needs),
/// dependencies first. Failures are reported and do not stop the boot.
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
    let started = Instant::now();
    let (mut loaded, mut failed) = (0, 0);
    for path in load_order(&deps) {
        match sys::load_module(&dir.join(&path), "") {
            Ok(()) => loaded += 1,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => {
                failed += 1;
                say!("module {path}: {e}");
            }
        }
    }
    say!("{loaded} modules loaded, {failed} failed, in {} ms", started.elapsed().as_millis());
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
    let deadline = Instant::now() + if first { DEVICE_WAIT } else { Duration::ZERO };
    let store = loop {
        match ConfigStore::locate() {
            Ok(Some(s)) => break Some(s),
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
    if cfg.get("media").is_none() && wait_for(Path::new("/dev/nvme0n1"), deadline) {
        let _ = cfg.apply("media", "/dev/nvme0n1", "default");
    }
    if let Some(media) = cfg.get("media").filter(|m| m.starts_with("/dev/")) {
        wait_for(Path::new(media), Instant::now() + if first { DEVICE_WAIT } else { Duration::ZERO });
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
    cmd.arg0("appliance").args(args).stdin(Stdio::null());
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
}
