//! The few system calls the init needs that std does not offer: mount, module loading, the
//! kernel's console log level, reaping children, reboot. Each wraps one libc call.
use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in argument"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// mount(2) of a pseudo file system `fstype` from `source` on `target`.
pub fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> io::Result<()> {
    let (s, t, f, d) = (cstring(source)?, cstring(target)?, cstring(fstype)?, cstring(data)?);
    // SAFETY: all four pointers are NUL-terminated strings that outlive the call.
    check(unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) })
}

/// finit_module(2): load the kernel module in file `path` with `params`.
pub fn load_module(path: &Path, params: &str) -> io::Result<()> {
    let file = std::fs::File::open(path)?;
    let p = cstring(params)?;
    // SAFETY: the fd is open for the duration of the call and p is NUL-terminated.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), p.as_ptr(), 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// klogctl(SYSLOG_ACTION_CONSOLE_LEVEL): which kernel messages reach the console (1: panics only).
pub fn set_console_loglevel(level: libc::c_int) -> io::Result<()> {
    const SYSLOG_ACTION_CONSOLE_LEVEL: libc::c_int = 8;
    // SAFETY: this action reads no buffer; a null pointer with length is what it expects.
    check(unsafe { libc::klogctl(SYSLOG_ACTION_CONSOLE_LEVEL, std::ptr::null_mut(), level) })
}

/// Makes each descriptor in `targets` (0, 1, 2 for stdio) refer to what `fd` refers to.
pub fn redirect(fd: &impl AsRawFd, targets: &[libc::c_int]) -> io::Result<()> {
    for &target in targets {
        if fd.as_raw_fd() == target {
            continue;
        }
        // SAFETY: dup2 onto a standard descriptor; fd's descriptor is valid while borrowed.
        check(unsafe { libc::dup2(fd.as_raw_fd(), target) })?;
    }
    Ok(())
}

/// How a reaped child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

/// waitpid(-1): reaps any child (orphans are re-parented to PID 1). Blocks.
pub fn wait_any() -> io::Result<(u32, ExitStatus)> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: status is a valid int to write the result into.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let how = if libc::WIFEXITED(status) {
            ExitStatus::Code(libc::WEXITSTATUS(status))
        } else {
            ExitStatus::Signal(libc::WTERMSIG(status))
        };
        return Ok((pid as u32, how));
    }
}

/// What to do to the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    PowerOff,
}

/// sync(2) then reboot(2). Returns only on failure.
pub fn power(action: PowerAction) -> io::Error {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let cmd = match action {
        PowerAction::Reboot => libc::RB_AUTOBOOT,
        PowerAction::PowerOff => libc::RB_POWER_OFF,
    };
    // SAFETY: reboot with a valid command; it does not return on success.
    unsafe { libc::reboot(cmd) };
    io::Error::last_os_error()
}
