//! The `pack` and `inspect` sub-commands: run, print, and map the outcome to an exit status
//! (0 success, 1 failure with `error: <reason>` on stderr).
use std::io::Write;
use std::path::Path;

/// `appliance pack <DIR> <VOLUME>`.
pub fn pack(dir: &Path, volume: &Path) -> i32 {
    match super::pack(dir, volume) {
        Ok(r) => {
            println!(
                "packed {} objects, {} bytes, into {} ({} bytes)",
                r.objects,
                r.bytes,
                volume.display(),
                r.volume_len
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// `appliance inspect <VOLUME>`: fails if the volume is corrupt or any checksum fails.
pub fn inspect(volume: &Path) -> i32 {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = super::inspect(volume, &mut out);
    let _ = out.flush();
    match result {
        Ok(r) if r.all_ok() => 0,
        Ok(r) => {
            eprintln!("error: {} of {} objects failed checksum verification", r.failed.len(), r.objects);
            1
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
