//! Media volumes: the format that holds the library of served files, and the tools around it.
//!
//! A volume is the same bytes in a regular file, on a block device and on an NVMe namespace,
//! so `appliance pack` writes it once and every storage backend reads it the same way:
//!
//! ```text
//! 0        4096                 data_offset                                  total_len
//! | header | index .. pad zeros | extent 0 .. pad | extent 1 .. pad | ...    |
//! ```
//!
//! - The header block (4096 bytes) names the format (magic `MEDIAVOL`, version 1, block size
//!   4096), where the index and the data region are, the total length, the creation time, the
//!   sha256 of the index, and ends with the sha256 of itself.
//! - The index holds one entry per object, sorted by path: its URL path, the offset of its
//!   extent, its size, content type, ETag, mtime and the sha256 of its content.
//! - Each extent starts on a 4096-byte boundary in the data region; the volume's length is a
//!   multiple of 4096. Padding is zeros.
//!
//! [`format`](mod@format) parses and emits the header and entries (byte layout there and in
//! docs/volume-format.md); [`load`] reads and validates header and index through any
//! [`Storage`] backend into a [`Volume`], the in-memory index of one drive (payload is never
//! loaded), and [`Library`] merges the volumes of several drives into the index the server
//! looks paths up in; [`pack`] writes a volume from a directory tree; [`inspect`]
//! lists and verifies one; [`cli`] maps both to the `pack` and `inspect` sub-commands.
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use drivers::storage::{Storage, StorageError};
use sha2::{Digest, Sha256};

pub mod cli;
mod content_type;
pub mod format;
mod inspect;
mod library;
mod pack;
mod read;

pub use content_type::content_type_for;
pub use inspect::{inspect, InspectReport};
pub use library::{DriveVolume, Found, Library, Shadowed};
pub use pack::{pack, PackReport};

use format::{EntryView, HeaderView, BLOCK_SIZE, HEADER_LEN};

/// How long [`load`] waits for any one read to complete.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// One file of the volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    /// URL path: starts with '/', the file's path relative to the packed directory.
    pub path: String,
    /// Byte offset of its extent in the volume (a multiple of 4096).
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    pub content_type: String,
    /// A quoted strong entity-tag derived from the content hash.
    pub etag: String,
    /// Modification time of the source file, unix seconds.
    pub mtime: u64,
    pub sha256: [u8; 32],
}

impl Object {
    /// Bytes the extent takes on the medium: the size rounded up to whole blocks.
    pub fn extent_len(&self) -> u64 {
        self.size.next_multiple_of(BLOCK_SIZE)
    }
}

/// A loaded, validated volume: the index in memory, lookups by path.
#[derive(Debug)]
pub struct Volume {
    objects: Vec<Object>,
    by_path: HashMap<Box<str>, usize>,
    data_offset: u64,
    data_len: u64,
    total_len: u64,
    created: u64,
    data_bytes: u64,
}

impl Volume {
    /// Every object, sorted by path.
    pub fn objects(&self) -> &[Object] {
        &self.objects
    }

    pub fn lookup(&self, path: &str) -> Option<&Object> {
        self.by_path.get(path).map(|&i| &self.objects[i])
    }

    /// Length of the whole volume in bytes (a multiple of 4096).
    pub fn total_len(&self) -> u64 {
        self.total_len
    }

    /// Sum of the objects' sizes.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Offset and length of the data region that holds every extent.
    pub fn data_region(&self) -> (u64, u64) {
        (self.data_offset, self.data_len)
    }

    /// When the volume was packed, unix seconds.
    pub fn created(&self) -> u64 {
        self.created
    }

    /// Builds a volume from its header block and index bytes, checking everything: header
    /// magic, version, checksum and layout, that a medium of `medium_len` bytes holds it, the
    /// index checksum, and every entry.
    pub fn parse(header: &[u8], index: &[u8], medium_len: u64) -> Result<Volume, VolumeError> {
        let h = HeaderView::new(header)?;
        h.check_layout()?;
        if h.total_len() > medium_len {
            return Err(VolumeError::Truncated { volume_len: h.total_len(), medium_len });
        }
        if index.len() as u64 != h.index_len() {
            return Err(VolumeError::BadIndex(format!(
                "{} index bytes given, header says {}",
                index.len(),
                h.index_len()
            )));
        }
        let sum: [u8; 32] = Sha256::digest(index).into();
        if &sum != h.index_sha256() {
            return Err(VolumeError::IndexChecksum);
        }
        let count = h.object_count() as usize; // check_layout bounded it by the index length
        let mut objects = Vec::with_capacity(count);
        let mut rest = index;
        let data_end = h.data_offset() + h.data_len();
        for i in 0..count {
            let bad = |reason: String| VolumeError::BadEntry { entry: i, reason };
            let (entry, after) = EntryView::parse(rest).map_err(bad)?;
            rest = after;
            let obj = entry.to_object();
            let bad = |reason: String| VolumeError::BadEntry { entry: i, reason: format!("{}: {reason}", obj.path) };
            if obj.offset % BLOCK_SIZE != 0 {
                return Err(bad(format!("offset {} is not a multiple of {BLOCK_SIZE}", obj.offset)));
            }
            let end = obj.size.checked_next_multiple_of(BLOCK_SIZE).and_then(|n| obj.offset.checked_add(n));
            if obj.offset < h.data_offset() || end.is_none_or(|end| end > data_end) {
                return Err(bad(format!(
                    "extent of {} bytes at {} is outside the data region [{}, {data_end})",
                    obj.size,
                    obj.offset,
                    h.data_offset()
                )));
            }
            if let Some(prev) = objects.last() {
                let prev: &Object = prev;
                if prev.path.as_str() >= obj.path.as_str() {
                    return Err(bad(format!("not sorted after {} (or a duplicate)", prev.path)));
                }
            }
            objects.push(obj);
        }
        if !rest.is_empty() {
            return Err(VolumeError::BadIndex(format!("{} bytes after the last of {count} entries", rest.len())));
        }
        check_no_overlap(&objects)?;
        let by_path = objects.iter().enumerate().map(|(i, o)| (Box::from(o.path.as_str()), i)).collect();
        Ok(Volume {
            data_bytes: objects.iter().map(|o| o.size).sum(),
            objects,
            by_path,
            data_offset: h.data_offset(),
            data_len: h.data_len(),
            total_len: h.total_len(),
            created: h.created(),
        })
    }
}

fn check_no_overlap(objects: &[Object]) -> Result<(), VolumeError> {
    let mut extents: Vec<(u64, u64, usize)> = objects
        .iter()
        .enumerate()
        .filter(|(_, o)| o.size > 0)
        .map(|(i, o)| (o.offset, o.offset + o.extent_len(), i))
        .collect();
    extents.sort_unstable();
    for pair in extents.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.0 < a.1 {
            return Err(VolumeError::BadEntry {
                entry: b.2,
                reason: format!("{}: extent overlaps that of {}", objects[b.2].path, objects[a.2].path),
            });
        }
    }
    Ok(())
}

/// Why a volume could not be packed, loaded or inspected.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("cannot open volume: {0}")]
    Open(StorageError),
    #[error("too short for a volume: {len} bytes, the header alone takes {HEADER_LEN}")]
    HeaderTooShort { len: usize },
    #[error("not a media volume (magic {:?}, expected \"MEDIAVOL\")", String::from_utf8_lossy(found))]
    BadMagic { found: [u8; 8] },
    #[error("unsupported volume format version {found} (this build reads version {})", format::VERSION)]
    UnsupportedVersion { found: u32 },
    #[error("header checksum mismatch: the header is corrupt")]
    HeaderChecksum,
    #[error("corrupt header: {0}")]
    BadLayout(String),
    #[error("volume truncated: it is {volume_len} bytes long but the medium holds only {medium_len}")]
    Truncated { volume_len: u64, medium_len: u64 },
    #[error("index checksum mismatch: the index is corrupt")]
    IndexChecksum,
    #[error("corrupt index: {0}")]
    BadIndex(String),
    #[error("corrupt index entry {entry}: {reason}")]
    BadEntry { entry: usize, reason: String },
    #[error("storage block size {block} does not divide the volume block size 4096")]
    UnsupportedBlockSize { block: usize },
    #[error("storage read at byte {offset} failed: {source}")]
    Storage { offset: u64, source: StorageError },
    #[error("storage read at byte {offset} did not complete within {waited:?}")]
    Timeout { offset: u64, waited: Duration },
    #[error("{}: {action}: {source}", path.display())]
    Io { path: PathBuf, action: &'static str, source: std::io::Error },
    #[error("{}: no such directory", .0.display())]
    MissingDir(PathBuf),
    #[error("{}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{}: no regular files to pack", .0.display())]
    EmptyDir(PathBuf),
    #[error("{}: cannot be packed: {reason}", path.display())]
    BadSourceFile { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    BadOutput { path: PathBuf, reason: String },
}

/// Reads and validates the header and index of the volume on `storage`.
pub fn load(storage: &mut dyn Storage) -> Result<Volume, VolumeError> {
    load_with_timeout(storage, LOAD_TIMEOUT)
}

/// [`load`], waiting at most `timeout` for any one read.
pub fn load_with_timeout(storage: &mut dyn Storage, timeout: Duration) -> Result<Volume, VolumeError> {
    let mut reader = read::BlockReader::new(storage, timeout)?;
    let medium_len = reader.capacity();
    if medium_len < HEADER_LEN as u64 {
        return Err(VolumeError::HeaderTooShort { len: medium_len as usize });
    }
    let mut header = Vec::with_capacity(HEADER_LEN);
    reader.read(0, HEADER_LEN as u64, |b| {
        header.extend_from_slice(b);
        Ok(())
    })?;
    let h = HeaderView::new(&header)?;
    h.check_layout()?;
    if h.total_len() > medium_len {
        return Err(VolumeError::Truncated { volume_len: h.total_len(), medium_len });
    }
    // check_layout bounded the index by MAX_INDEX_LEN and the medium holds it.
    let mut index = Vec::with_capacity(h.index_len() as usize);
    reader.read(h.index_offset(), h.index_len(), |b| {
        index.extend_from_slice(b);
        Ok(())
    })?;
    let volume = Volume::parse(&header, &index, medium_len)?;
    log::debug!(
        "volume: {} objects, {} bytes of content, {} bytes in all",
        volume.objects.len(),
        volume.data_bytes,
        volume.total_len
    );
    Ok(volume)
}

/// Reads the content of `obj` through `storage` and compares its sha256 with the index.
/// Returns Ok(false) on a mismatch.
pub(crate) fn verify_object(reader: &mut read::BlockReader<'_>, obj: &Object) -> Result<bool, VolumeError> {
    let mut hasher = Sha256::new();
    reader.read(obj.offset, obj.size, |b| {
        hasher.update(b);
        Ok(())
    })?;
    let sum: [u8; 32] = hasher.finalize().into();
    Ok(sum == obj.sha256)
}

#[cfg(test)]
mod tests;
