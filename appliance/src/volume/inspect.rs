//! `appliance inspect`: loads a volume with the file backend, lists its objects and verifies
//! every object's sha256 by reading its extent through the [`Storage`] trait.
//!
//! [`Storage`]: drivers::storage::Storage
use std::io::Write;
use std::path::{Path, PathBuf};

use drivers::storage::FileStorage;

use super::read::BlockReader;
use super::{load_with_timeout, verify_object, VolumeError, LOAD_TIMEOUT};

/// What `inspect` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InspectReport {
    pub objects: usize,
    /// Sum of the objects' sizes.
    pub bytes: u64,
    /// Paths of the objects whose content does not match its checksum or could not be read.
    pub failed: Vec<String>,
}

impl InspectReport {
    pub fn all_ok(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Validates the volume at `path`, writes its listing and a verification summary to `out`.
/// A corrupt header or index is an error; corrupt content is reported in
/// [`InspectReport::failed`].
pub fn inspect(path: &Path, out: &mut dyn Write) -> Result<InspectReport, VolumeError> {
    let mut storage = FileStorage::open(path).map_err(VolumeError::Open)?;
    let volume = load_with_timeout(&mut storage, LOAD_TIMEOUT)?;
    let w = |r: std::io::Result<()>| {
        r.map_err(|source| VolumeError::Io { path: PathBuf::from("<output>"), action: "write", source })
    };

    let objects = volume.objects();
    let path_width = objects.iter().map(|o| o.path.chars().count()).max().unwrap_or(0).max(4);
    let size_width = objects.iter().map(|o| o.size.to_string().len()).max().unwrap_or(0).max(4);
    w(writeln!(
        out,
        "volume {}: format {}, {} bytes, created {} (unix seconds)",
        path.display(),
        super::format::VERSION,
        volume.total_len(),
        volume.created()
    ))?;
    w(writeln!(out, "{:<path_width$}  {:>size_width$}  CONTENT-TYPE", "PATH", "SIZE"))?;
    for o in objects {
        w(writeln!(out, "{:<path_width$}  {:>size_width$}  {}", o.path, o.size, o.content_type))?;
    }

    let mut reader = BlockReader::new(&mut storage, LOAD_TIMEOUT)?;
    let mut failed = Vec::new();
    for o in objects {
        match verify_object(&mut reader, o) {
            Ok(true) => {}
            Ok(false) => {
                w(writeln!(out, "FAILED {}: checksum mismatch", o.path))?;
                failed.push(o.path.clone());
            }
            Err(e) => {
                w(writeln!(out, "FAILED {}: {e}", o.path))?;
                failed.push(o.path.clone());
            }
        }
    }
    let report = InspectReport { objects: objects.len(), bytes: volume.data_bytes(), failed };
    if report.all_ok() {
        w(writeln!(out, "{} objects, {} bytes, all checksums ok", report.objects, report.bytes))?;
    } else {
        w(writeln!(
            out,
            "{} objects, {} bytes, {} of {} checksums FAILED",
            report.objects,
            report.bytes,
            report.failed.len(),
            report.objects
        ))?;
    }
    Ok(report)
}
