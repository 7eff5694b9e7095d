//! DPDK's Environment Abstraction Layer: started once per process, from the argument
//! string of `--nic dpdk:...` (split as a shell would), with the caller's CPU affinity kept.

use super::*;

/// Set once `rte_eal_init` has been called: DPDK allows one initialisation per process.
pub(super) static EAL_STARTED: AtomicBool = AtomicBool::new(false);

/// Splits the EAL argument string like a POSIX shell would (quotes, backslashes).
pub fn split_eal_args(eal_args: &str) -> Result<Vec<String>, NicError> {
    shlex::split(eal_args).ok_or_else(|| {
        config_error(format!(
            "cannot split DPDK EAL arguments {eal_args:?}: unbalanced quote"
        ))
    })
}

pub(super) fn eal_init(eal_args: &str) -> Result<(), NicError> {
    let mut args = vec!["appliance".to_string()];
    args.extend(split_eal_args(eal_args)?);
    let args: Vec<CString> = args
        .into_iter()
        .map(|a| CString::new(a).map_err(|_| config_error("DPDK EAL argument holds a NUL byte")))
        .collect::<Result<_, _>>()?;
    if EAL_STARTED.swap(true, Ordering::SeqCst) {
        return Err(config_error(
            "DPDK EAL is already initialised in this process (once only)",
        ));
    }
    // EAL keeps pointers into argv (and permutes it): both live for the rest of the process.
    let args: &'static [CString] = Box::leak(args.into_boxed_slice());
    let argv: &'static mut [*mut c_char] = Box::leak(
        args.iter()
            .map(|a| a.as_ptr() as *mut c_char)
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    log::info!("dpdk: EAL init with {:?}", args);
    // SAFETY: sets DPDK's global log stream to the process's stderr (valid for its whole
    // life); allowed before EAL init. Keeps EAL and PMD messages off a stdio console.
    if unsafe { sys::dpdk_sys_log_to_stderr() } != 0 {
        log::warn!("dpdk: cannot send DPDK's log to stderr");
    }
    let affinity = thread_affinity();
    // SAFETY: argv holds argc valid NUL-terminated strings that are never freed; EAL init
    // runs at most once per process (guarded by EAL_STARTED).
    let ret = unsafe { sys::rte_eal_init(argv.len() as c_int, argv.as_mut_ptr()) };
    if ret < 0 {
        return Err(dpdk_error("DPDK EAL initialisation failed", 0));
    }
    // EAL pins the calling thread to its main lcore; the appliance places its own threads
    // (and those they spawn inherit this mask), so give the caller its mask back.
    if let Some(set) = affinity {
        // SAFETY: `set` is a cpu_set_t filled by sched_getaffinity for this same thread.
        if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0
        {
            log::warn!(
                "dpdk: cannot restore the CPU affinity EAL changed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// The calling thread's CPU affinity mask, if the kernel tells it.
pub(super) fn thread_affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is a plain bit array for which all-zero is valid; sched_getaffinity
    // writes at most its size into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
            .then_some(set)
    }
}
