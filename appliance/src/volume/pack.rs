//! `appliance pack`: writes a volume holding every regular file under a directory.
//!
//! The layout is fixed before any content is copied (the index length depends only on the
//! paths), so each file is streamed once into its extent while its sha256 is computed, and the
//! index and header are written last. The header block is zeroed first and written only after
//! everything else is on the medium, so an interrupted pack never leaves a valid-looking volume.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::format::{self, block_align, HeaderFields, BLOCK_SIZE, HEADER_LEN, MAX_INDEX_LEN};
use super::{content_type_for, Object, VolumeError};

/// Copy buffer: a multiple of the block size.
const COPY_LEN: usize = 1 << 20;

/// What `pack` wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackReport {
    pub objects: usize,
    /// Sum of the objects' sizes.
    pub bytes: u64,
    /// Length of the volume written (header, index, extents, padding).
    pub volume_len: u64,
}

/// A regular file found under the packed directory.
struct Source {
    url_path: String,
    fs_path: PathBuf,
    size: u64,
    mtime: u64,
}

/// Packs every regular file under `dir` into a volume at `out` (a regular file, created or
/// truncated, or an existing block device, written in place).
pub fn pack(dir: &Path, out: &Path) -> Result<PackReport, VolumeError> {
    let io_err = |path: &Path, action: &'static str| {
        let path = path.to_path_buf();
        move |source| VolumeError::Io { path, action, source }
    };
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(VolumeError::NotADirectory(dir.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(VolumeError::MissingDir(dir.to_path_buf())),
        Err(e) => return Err(io_err(dir, "stat")(e)),
    }
    let out_meta = match fs::metadata(out) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(out, "stat")(e)),
    };
    let is_block_device = out_meta.as_ref().is_some_and(|m| m.file_type().is_block_device());
    if let Some(m) = &out_meta {
        if !m.is_file() && !is_block_device {
            return Err(VolumeError::BadOutput {
                path: out.to_path_buf(),
                reason: "exists and is neither a regular file nor a block device".into(),
            });
        }
    }
    // The output may lie inside the packed directory: never pack it into itself.
    let skip = out_meta.as_ref().map(|m| (m.dev(), m.ino()));
    let sources = walk(dir, skip)?;
    if sources.is_empty() {
        return Err(VolumeError::EmptyDir(dir.to_path_buf()));
    }

    let mut objects: Vec<Object> = sources
        .iter()
        .map(|s| Object {
            path: s.url_path.clone(),
            offset: 0,
            size: 0,
            content_type: content_type_for(&s.url_path).to_owned(),
            etag: format::etag_for(&[0; 32]),
            mtime: s.mtime,
            sha256: [0; 32],
        })
        .collect();
    let index_len: u64 = objects.iter().map(|o| format::entry_len(o) as u64).sum();
    if index_len > MAX_INDEX_LEN {
        return Err(VolumeError::BadSourceFile {
            path: dir.to_path_buf(),
            reason: format!("the index would take {index_len} bytes, more than the {MAX_INDEX_LEN} byte limit"),
        });
    }
    let index_offset = HEADER_LEN as u64;
    let data_offset = index_offset + block_align(index_len).expect("bounded by MAX_INDEX_LEN");

    let mut file = if is_block_device {
        OpenOptions::new().write(true).open(out).map_err(io_err(out, "open"))?
    } else {
        OpenOptions::new().write(true).create(true).truncate(true).open(out).map_err(io_err(out, "create"))?
    };
    if is_block_device {
        let capacity = file.seek(SeekFrom::End(0)).map_err(io_err(out, "size"))?;
        let need = sources
            .iter()
            .try_fold(data_offset, |acc, s| block_align(s.size).and_then(|n| acc.checked_add(n)))
            .unwrap_or(u64::MAX);
        if need > capacity {
            return Err(VolumeError::BadOutput {
                path: out.to_path_buf(),
                reason: format!("the volume needs {need} bytes, the device holds {capacity}"),
            });
        }
    }
    // Invalidate whatever volume was there before anything else is overwritten.
    file.write_all_at(&[0u8; HEADER_LEN], 0).map_err(io_err(out, "write"))?;

    let mut buf = vec![0u8; COPY_LEN];
    let mut pos = data_offset;
    for (src, obj) in sources.iter().zip(objects.iter_mut()) {
        let (size, sha256) = copy_file(&src.fs_path, &file, out, pos, &mut buf)?;
        if size != src.size {
            log::warn!("{}: size changed while packing ({} -> {size} bytes)", src.fs_path.display(), src.size);
        }
        obj.offset = pos;
        obj.size = size;
        obj.sha256 = sha256;
        obj.etag = format::etag_for(&sha256);
        pos += block_align(size).expect("extent fits after a successful write");
    }

    let mut index = vec![0u8; block_align(index_len).expect("bounded") as usize];
    let mut at = 0;
    for obj in &objects {
        at += format::emit_entry(obj, &mut index[at..])
            .map_err(|reason| VolumeError::BadSourceFile { path: PathBuf::from(&obj.path), reason })?;
    }
    debug_assert_eq!(at as u64, index_len);
    let header = HeaderFields {
        object_count: objects.len() as u64,
        index_offset,
        index_len,
        data_offset,
        data_len: pos - data_offset,
        total_len: pos,
        created: created_time(),
        index_sha256: Sha256::digest(&index[..at]).into(),
    };
    file.write_all_at(&index, index_offset).map_err(io_err(out, "write index"))?;
    if !is_block_device {
        file.set_len(pos).map_err(io_err(out, "set length"))?;
    }
    file.sync_all().map_err(io_err(out, "sync"))?;
    let mut block = [0u8; HEADER_LEN];
    format::emit_header(&header, &mut block).expect("a whole header block");
    file.write_all_at(&block, 0).map_err(io_err(out, "write header"))?;
    file.sync_all().map_err(io_err(out, "sync"))?;
    Ok(PackReport { objects: objects.len(), bytes: objects.iter().map(|o| o.size).sum(), volume_len: pos })
}

/// Streams `src` into the volume at `pos`, zero-padded to whole blocks. Returns the bytes
/// copied and their sha256.
fn copy_file(
    src: &Path,
    out: &File,
    out_path: &Path,
    pos: u64,
    buf: &mut [u8],
) -> Result<(u64, [u8; 32]), VolumeError> {
    let read_err = |source| VolumeError::Io { path: src.to_path_buf(), action: "read", source };
    let mut input = File::open(src).map_err(read_err)?;
    let mut hasher = Sha256::new();
    let mut copied = 0u64;
    loop {
        let n = read_full(&mut input, buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        let padded = (n as u64).next_multiple_of(BLOCK_SIZE) as usize;
        buf[n..padded].fill(0);
        let at = pos.checked_add(copied).ok_or_else(|| VolumeError::BadSourceFile {
            path: src.to_path_buf(),
            reason: "volume would exceed 2^64 bytes".into(),
        })?;
        out.write_all_at(&buf[..padded], at).map_err(|source| VolumeError::Io {
            path: out_path.to_path_buf(),
            action: "write",
            source,
        })?;
        copied += n as u64;
        if n < buf.len() {
            break;
        }
    }
    Ok((copied, hasher.finalize().into()))
}

/// Reads until `buf` is full or the end of the file.
fn read_full(input: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The header's creation time: SOURCE_DATE_EPOCH when set (reproducible builds), else now.
fn created_time() -> u64 {
    if let Some(t) = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.trim().parse().ok()) {
        return t;
    }
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Every regular file under `root`, sorted by URL path. Symbolic links are followed only to
/// regular files inside `root`; directories reached through links, links that leave `root`,
/// sockets, FIFOs and devices are skipped with a warning. `skip` is the output file.
fn walk(root: &Path, skip: Option<(u64, u64)>) -> Result<Vec<Source>, VolumeError> {
    let io_err = |path: &Path, action: &'static str| {
        let path = path.to_path_buf();
        move |source| VolumeError::Io { path, action, source }
    };
    let canonical_root = fs::canonicalize(root).map_err(io_err(root, "resolve"))?;
    let mut found = Vec::new();
    // (directory, its URL path prefix)
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let mut entries = fs::read_dir(&dir)
            .map_err(io_err(&dir, "read directory"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(io_err(&dir, "read directory"))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let fs_path = entry.path();
            let name = entry.file_name();
            let name = name.to_str().ok_or_else(|| VolumeError::BadSourceFile {
                path: fs_path.clone(),
                reason: "its name is not UTF-8".into(),
            })?;
            let url_path = format!("{prefix}/{name}");
            let mut meta = fs::symlink_metadata(&fs_path).map_err(io_err(&fs_path, "stat"))?;
            if meta.file_type().is_symlink() {
                let target = match fs::canonicalize(&fs_path) {
                    Ok(t) => t,
                    Err(e) => {
                        log::warn!("{}: skipped, dangling symbolic link ({e})", fs_path.display());
                        continue;
                    }
                };
                if !target.starts_with(&canonical_root) {
                    log::warn!("{}: skipped, symbolic link to outside {}", fs_path.display(), root.display());
                    continue;
                }
                meta = fs::metadata(&target).map_err(io_err(&target, "stat"))?;
                if !meta.is_file() {
                    log::warn!("{}: skipped, symbolic link to a non-regular file", fs_path.display());
                    continue;
                }
            }
            if meta.is_dir() {
                stack.push((fs_path, url_path));
                continue;
            }
            if !meta.is_file() {
                log::warn!("{}: skipped, not a regular file", fs_path.display());
                continue;
            }
            if skip == Some((meta.dev(), meta.ino())) {
                log::warn!("{}: skipped, it is the volume being written", fs_path.display());
                continue;
            }
            format::check_path(&url_path).map_err(|reason| VolumeError::BadSourceFile {
                path: fs_path.clone(),
                reason: format!("{url_path:?} is not a servable URL path: {reason}"),
            })?;
            let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
            found.push(Source { url_path, fs_path, size: meta.len(), mtime });
        }
    }
    found.sort_by(|a, b| a.url_path.cmp(&b.url_path));
    Ok(found)
}
