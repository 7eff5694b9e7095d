//! The few operating-system calls the appliance makes outside its drivers (CPU affinity), and
//! the prefetch hint the fast path gives the core.
//! One of the named modules of `appliance` allowed to hold `unsafe`.

/// Cores this process may run on.
pub fn allowed_cores() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: we pass the size of the set we own; pid 0 means this thread.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return vec![0];
    }
    // SAFETY: CPU_ISSET reads the set we own, for indices within its capacity.
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

/// Pin the calling thread to `core`.
pub fn pin_to_core(core: usize) -> std::io::Result<()> {
    if core >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: as above; the index is below CPU_SETSIZE.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the index was checked against the set's capacity.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: we pass the size of the set we own; pid 0 means this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Ask the core to start loading the first `lines` cache lines of `value` (those it spans, at
/// most), without waiting for them. A connection's state is cold when its turn comes (other
/// connections' bytes passed through the caches since its last one); loads started a turn
/// ahead overlap the turn before.
#[inline]
pub fn prefetch<T: ?Sized>(value: &T, lines: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        const LINE: usize = 64;
        let start = value as *const T as *const u8 as usize;
        let end = start + std::mem::size_of_val(value);
        for line in (start & !(LINE - 1)..end).step_by(LINE).take(lines) {
            // SAFETY: a prefetch is a hint: it reads nothing into the program and never faults,
            // whatever the address; this one lies in a line of `value`.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line as *const i8) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (value, lines);
}
