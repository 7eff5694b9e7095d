//! Tests of pack, load and inspect together, and property tests of the parser.
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use drivers::storage::{Completion, DmaBuf, DmaPool, FileStorage, Storage, StorageCounters, StorageError};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

use super::format::{self, HeaderFields, HEADER_LEN};
use super::read::BlockReader;
use super::*;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8).collect()
}

/// A source tree with sizes around block and copy-buffer boundaries. Returns (URL path, bytes).
fn make_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("index.html", b"<html>hello</html>".to_vec()),
        ("empty.txt", Vec::new()),
        ("hls/720p/index.m3u8", b"#EXTM3U\n".to_vec()),
        ("hls/720p/seg-00001.ts", pattern(4096, 1)),
        ("hls/720p/seg-00002.ts", pattern(4097, 2)),
        ("hls/720p/seg-00003.ts", pattern(4095, 3)),
        ("hls/1080p/seg-00001.ts", pattern((1 << 20) + 12345, 4)),
        ("a-b.json", b"{}".to_vec()),
        ("a/b.json", b"[]".to_vec()),
        ("Movie.MP4", pattern(2 << 20, 5)),
    ];
    for (p, bytes) in &files {
        let full = dir.join(p);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(&full, bytes).unwrap();
    }
    let mut v: Vec<(String, Vec<u8>)> = files.into_iter().map(|(p, b)| (format!("/{p}"), b)).collect();
    v.sort();
    v
}

fn read_object(storage: &mut dyn Storage, obj: &Object) -> Vec<u8> {
    let mut reader = BlockReader::new(storage, Duration::from_secs(5)).unwrap();
    let mut bytes = Vec::new();
    reader
        .read(obj.offset, obj.size, |b| {
            bytes.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
    bytes
}

fn packed() -> (tempfile::TempDir, std::path::PathBuf, Vec<(String, Vec<u8>)>) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let files = make_tree(&src);
    let vol = tmp.path().join("media.vol");
    pack(&src, &vol).unwrap();
    (tmp, vol, files)
}

#[test]
fn pack_load_lookup_read_round_trip() {
    let (tmp, vol, files) = packed();
    let report = pack(&tmp.path().join("src"), &tmp.path().join("again.vol")).unwrap();
    assert_eq!(report.objects, files.len());
    assert_eq!(report.bytes, files.iter().map(|(_, b)| b.len() as u64).sum::<u64>());
    assert_eq!(report.volume_len % 4096, 0);
    assert_eq!(fs::metadata(&vol).unwrap().len(), report.volume_len);

    let mut storage = FileStorage::open(&vol).unwrap();
    let volume = load(&mut storage).unwrap();
    assert_eq!(volume.total_len(), report.volume_len);
    assert_eq!(volume.data_bytes(), report.bytes);
    let paths: Vec<&str> = volume.objects().iter().map(|o| o.path.as_str()).collect();
    let expected: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, expected, "every file, sorted by path");
    for (path, bytes) in &files {
        let obj = volume.lookup(path).unwrap_or_else(|| panic!("{path} missing"));
        assert_eq!(&obj.path, path);
        assert_eq!(obj.size, bytes.len() as u64);
        assert_eq!(obj.offset % 4096, 0);
        let sha: [u8; 32] = Sha256::digest(bytes).into();
        assert_eq!(obj.sha256, sha);
        assert_eq!(obj.etag, format!("\"{}\"", format::hex(&sha[..8])));
        assert_eq!(obj.content_type, content_type_for(path));
        assert!(obj.mtime > 1_000_000_000, "mtime from the source file");
        assert_eq!(&read_object(&mut storage, obj), bytes, "{path}");
    }
    assert_eq!(volume.lookup("/hls/720p/seg-00001.ts").unwrap().content_type, "video/mp2t");
    assert_eq!(volume.lookup("/Movie.MP4").unwrap().content_type, "video/mp4");
    assert!(volume.lookup("/nope").is_none());
    assert!(volume.lookup("hls/720p/index.m3u8").is_none());
    assert!(volume.lookup("/hls").is_none());
    assert!(storage.counters().reads > 0);
    assert_eq!(storage.counters().errors, 0);
}

#[test]
fn pack_is_deterministic_but_for_the_creation_time() {
    let (tmp, vol, _) = packed();
    let again = tmp.path().join("again.vol");
    pack(&tmp.path().join("src"), &again).unwrap();
    let (a, b) = (fs::read(&vol).unwrap(), fs::read(&again).unwrap());
    assert_eq!(a.len(), b.len());
    assert_eq!(a[..64], b[..64]);
    assert_eq!(a[HEADER_LEN..], b[HEADER_LEN..]);
}

#[test]
fn pack_refuses_missing_empty_and_non_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.vol");
    assert!(matches!(pack(&tmp.path().join("missing"), &out), Err(VolumeError::MissingDir(_))));
    let empty = tmp.path().join("empty");
    fs::create_dir_all(empty.join("sub/dir")).unwrap();
    assert!(matches!(pack(&empty, &out), Err(VolumeError::EmptyDir(_))));
    let file = tmp.path().join("file");
    fs::write(&file, b"x").unwrap();
    assert!(matches!(pack(&file, &out), Err(VolumeError::NotADirectory(_))));
    assert!(!out.exists(), "nothing written on refusal");
    let err = pack(&empty, &out).unwrap_err().to_string();
    assert!(err.contains("no regular files"), "{err}");
}

#[test]
fn pack_skips_links_out_of_the_tree_special_files_and_its_output() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/real.ts"), b"inside").unwrap();
    fs::write(tmp.path().join("secret"), b"outside").unwrap();
    std::os::unix::fs::symlink("d/real.ts", src.join("alias.ts")).unwrap();
    std::os::unix::fs::symlink("../secret", src.join("escape")).unwrap();
    std::os::unix::fs::symlink("d", src.join("dirlink")).unwrap();
    std::os::unix::fs::symlink("nowhere", src.join("dangling")).unwrap();
    let mkfifo = std::process::Command::new("mkfifo").arg(src.join("fifo")).status().unwrap();
    assert!(mkfifo.success());
    // A volume that already exists inside the tree is not packed into itself.
    let out = src.join("media.vol");
    fs::write(&out, b"old").unwrap();
    let report = pack(&src, &out).unwrap();
    assert_eq!(report.objects, 2);
    let mut storage = FileStorage::open(&out).unwrap();
    let volume = load(&mut storage).unwrap();
    let paths: Vec<&str> = volume.objects().iter().map(|o| o.path.as_str()).collect();
    assert_eq!(paths, ["/alias.ts", "/d/real.ts"]);
    let alias = volume.lookup("/alias.ts").unwrap().clone();
    assert_eq!(read_object(&mut storage, &alias), b"inside");
}

#[test]
fn truncated_volumes_are_refused() {
    let (tmp, vol, _) = packed();
    let bytes = fs::read(&vol).unwrap();
    let total = bytes.len();
    let cut_path = tmp.path().join("cut.vol");
    for cut in [0, 100, HEADER_LEN - 1, HEADER_LEN, HEADER_LEN + 50, total - 4096, total - 1] {
        fs::write(&cut_path, &bytes[..cut]).unwrap();
        let mut storage = FileStorage::open(&cut_path).unwrap();
        let err = load(&mut storage).unwrap_err();
        assert!(
            matches!(err, VolumeError::HeaderTooShort { .. } | VolumeError::Truncated { .. }),
            "cut at {cut}: {err}"
        );
        if cut >= HEADER_LEN {
            assert!(err.to_string().contains("truncated"), "{err}");
        }
    }
}

#[test]
fn inspect_lists_objects_and_detects_a_flipped_data_byte() {
    let (_tmp, vol, files) = packed();
    let mut out = Vec::new();
    let report = inspect(&vol, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(report.all_ok(), "{text}");
    assert_eq!(report.objects, files.len());
    for (path, bytes) in &files {
        let line = text.lines().find(|l| l.starts_with(&format!("{path} "))).unwrap_or_else(|| panic!("{text}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1], bytes.len().to_string());
        assert_eq!(cols[2..].join(" "), content_type_for(path));
    }
    // Sizes are right-aligned and content types start in one column.
    let table: Vec<&str> = text.lines().skip(1).take(files.len() + 1).collect();
    let type_columns: Vec<usize> = table
        .iter()
        .zip(["CONTENT-TYPE"].into_iter().chain(files.iter().map(|(p, _)| content_type_for(p))))
        .map(|(l, ct)| l.len() - ct.len())
        .collect();
    assert!(type_columns.windows(2).all(|w| w[0] == w[1]), "aligned columns:\n{text}");
    let total: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    assert!(text.ends_with(&format!("{} objects, {total} bytes, all checksums ok\n", files.len())), "{text}");

    // Flip one byte inside one object's extent.
    let volume = load(&mut FileStorage::open(&vol).unwrap()).unwrap();
    let victim = volume.lookup("/hls/720p/seg-00002.ts").unwrap();
    let f = fs::OpenOptions::new().read(true).write(true).open(&vol).unwrap();
    let at = victim.offset + 4096;
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0x01], at).unwrap();
    let mut out = Vec::new();
    let report = inspect(&vol, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(report.failed, ["/hls/720p/seg-00002.ts"]);
    assert!(text.contains("FAILED /hls/720p/seg-00002.ts: checksum mismatch"), "{text}");
    assert!(text.contains("1 of 10 checksums FAILED"), "{text}");

    // A flipped padding byte after an object's end changes no checksum.
    f.write_all_at(&[byte[0]], at).unwrap();
    f.write_all_at(&[0xff], victim.offset + victim.size).unwrap();
    assert!(inspect(&vol, &mut Vec::new()).unwrap().all_ok());
}

/// Header and index bytes of a volume holding `objects` in a data region of `data_len` bytes.
fn build(objects: &[Object], data_len: u64) -> (Vec<u8>, Vec<u8>) {
    let mut index = vec![0u8; objects.iter().map(format::entry_len).sum()];
    let mut at = 0;
    for o in objects {
        at += format::emit_entry(o, &mut index[at..]).unwrap();
    }
    let data_offset = HEADER_LEN as u64 + format::block_align(index.len() as u64).unwrap();
    let fields = HeaderFields {
        object_count: objects.len() as u64,
        index_offset: HEADER_LEN as u64,
        index_len: index.len() as u64,
        data_offset,
        data_len,
        total_len: data_offset + data_len,
        created: 0,
        index_sha256: Sha256::digest(&index).into(),
    };
    let mut header = vec![0u8; HEADER_LEN];
    format::emit_header(&fields, &mut header).unwrap();
    (header, index)
}

fn object(path: &str, offset: u64, size: u64) -> Object {
    Object {
        path: path.into(),
        offset,
        size,
        content_type: "video/mp2t".into(),
        etag: format::etag_for(&[1; 32]),
        mtime: 0,
        sha256: [1; 32],
    }
}

#[test]
fn bad_entries_are_refused_by_name() {
    // With two small entries the index fits one block and data starts at 8192.
    let d = 8192;
    let ok = [object("/a.ts", d, 5000), object("/b.ts", d + 8192, 1)];
    let (h, i) = build(&ok, 3 * 4096);
    let v = Volume::parse(&h, &i, 1 << 20).unwrap();
    assert_eq!(v.data_region(), (d, 3 * 4096));
    let cases: [(&[Object], &str); 5] = [
        (&[object("/b.ts", d, 1), object("/a.ts", d + 4096, 1)], "not sorted"),
        (&[object("/a.ts", d, 1), object("/a.ts", d + 4096, 1)], "duplicate"),
        (&[object("/a.ts", d, 5000), object("/b.ts", d + 4096, 1)], "overlaps"),
        (&[object("/a.ts", d + 100, 1), object("/b.ts", d + 4096, 1)], "not a multiple"),
        (&[object("/a.ts", d, 1), object("/b.ts", d + 8192, 4097)], "outside the data region"),
    ];
    for (objects, what) in cases {
        let (h, i) = build(objects, 3 * 4096);
        let err = Volume::parse(&h, &i, 1 << 20).unwrap_err();
        assert!(matches!(err, VolumeError::BadEntry { .. }), "{what}: {err}");
        assert!(err.to_string().contains(what), "{what}: {err}");
    }
    let (h, i) = build(&[object("/a.ts", 0, 1)], 4096);
    assert!(Volume::parse(&h, &i, 1 << 20).unwrap_err().to_string().contains("outside the data region"));
    // An entry count that does not match the index.
    let (h, mut i) = build(&ok, 3 * 4096);
    i.extend_from_slice(&[0; 3]);
    assert!(matches!(Volume::parse(&h, &i, 1 << 20), Err(VolumeError::BadIndex(_))));
}

/// A backend that accepts reads and never completes them.
struct Stuck {
    held: Vec<DmaBuf>,
}

impl Storage for Stuck {
    fn backend(&self) -> &'static str {
        "stuck"
    }
    fn capacity(&self) -> u64 {
        1 << 30
    }
    fn block_size(&self) -> usize {
        512
    }
    fn dma_pool(&mut self, buf_size: usize, count: usize) -> Result<DmaPool, StorageError> {
        Ok(DmaPool::heap(buf_size, count, 4096))
    }
    fn submit_read(&mut self, _tag: u64, _offset: u64, _len: usize, buf: DmaBuf) -> Result<(), (StorageError, DmaBuf)> {
        self.held.push(buf);
        Ok(())
    }
    fn poll(&mut self, _out: &mut Vec<Completion>) -> usize {
        0
    }
    fn in_flight(&self) -> usize {
        self.held.len()
    }
    fn counters(&self) -> StorageCounters {
        StorageCounters::default()
    }
}

#[test]
fn a_backend_that_never_completes_times_out() {
    let mut stuck = Stuck { held: Vec::new() };
    let err = load_with_timeout(&mut stuck, Duration::from_millis(50)).unwrap_err();
    assert!(matches!(err, VolumeError::Timeout { offset: 0, .. }), "{err}");
    assert!(err.to_string().contains("did not complete"), "{err}");
}

/// The file backend with completions delivered in reverse order, one poll in two empty.
struct Reordering {
    inner: FileStorage,
    skip: bool,
}

impl Storage for Reordering {
    fn backend(&self) -> &'static str {
        "reordering"
    }
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
    fn block_size(&self) -> usize {
        self.inner.block_size()
    }
    fn dma_pool(&mut self, buf_size: usize, count: usize) -> Result<DmaPool, StorageError> {
        self.inner.dma_pool(buf_size, count)
    }
    fn submit_read(&mut self, tag: u64, offset: u64, len: usize, buf: DmaBuf) -> Result<(), (StorageError, DmaBuf)> {
        self.inner.submit_read(tag, offset, len, buf)
    }
    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        self.skip = !self.skip;
        if self.skip {
            return 0;
        }
        let start = out.len();
        let n = self.inner.poll(out);
        out[start..].reverse();
        n
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
    fn counters(&self) -> StorageCounters {
        self.inner.counters()
    }
}

#[test]
fn out_of_order_completions_are_delivered_in_order() {
    let (_tmp, vol, files) = packed();
    let mut storage = Reordering { inner: FileStorage::open(&vol).unwrap(), skip: false };
    let volume = load(&mut storage).unwrap();
    for (path, bytes) in &files {
        assert_eq!(&read_object(&mut storage, volume.lookup(path).unwrap()), bytes, "{path}");
    }
}

#[test]
fn a_non_volume_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("zeros");
    fs::write(&p, vec![0u8; 16384]).unwrap();
    let err = load(&mut FileStorage::open(&p).unwrap()).unwrap_err();
    assert!(matches!(err, VolumeError::BadMagic { .. }), "{err}");
    assert!(err.to_string().contains("not a media volume"));
}

/// Header and index of a small real volume (packed once).
fn real_volume() -> (Vec<u8>, Vec<u8>, u64) {
    static VOLUME: std::sync::OnceLock<(Vec<u8>, Vec<u8>, u64)> = std::sync::OnceLock::new();
    VOLUME.get_or_init(pack_real_volume).clone()
}

fn pack_real_volume() -> (Vec<u8>, Vec<u8>, u64) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("x")).unwrap();
    fs::write(src.join("a.m3u8"), b"#EXTM3U").unwrap();
    fs::write(src.join("x/b.ts"), pattern(9000, 7)).unwrap();
    fs::write(src.join("x/c.txt"), b"").unwrap();
    let vol = tmp.path().join("v");
    pack(&src, &vol).unwrap();
    let bytes = fs::read(&vol).unwrap();
    let h = format::HeaderView::new(&bytes).unwrap();
    let index = bytes[h.index_offset() as usize..(h.index_offset() + h.index_len()) as usize].to_vec();
    (bytes[..HEADER_LEN].to_vec(), index, bytes.len() as u64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(
        header in proptest::collection::vec(any::<u8>(), 0..4200),
        index in proptest::collection::vec(any::<u8>(), 0..600),
        medium in any::<u64>(),
    ) {
        let _ = format::HeaderView::new(&header).map(|h| h.check_layout());
        prop_assert!(Volume::parse(&header, &index, medium).is_err());
        let mut rest = &index[..];
        while let Ok((_, after)) = format::EntryView::parse(rest) {
            rest = after;
        }
    }

    /// Headers with valid checksums and random fields, indexes of random bytes with valid
    /// checksums: the deeper checks must refuse without panicking.
    #[test]
    fn checksummed_garbage_never_panics(
        fields in any::<[u64; 7]>(),
        small in any::<[u16; 7]>(),
        index in proptest::collection::vec(any::<u8>(), 0..600),
        medium in any::<u64>(),
    ) {
        let pick = |i: usize| if fields[i] % 3 == 0 { fields[i] } else { small[i] as u64 * 512 };
        let h = HeaderFields {
            object_count: pick(0) % 16,
            index_offset: pick(1),
            index_len: if fields[2] % 2 == 0 { index.len() as u64 } else { pick(2) },
            data_offset: pick(3),
            data_len: pick(4),
            total_len: pick(5),
            created: fields[6],
            index_sha256: Sha256::digest(&index).into(),
        };
        let mut header = vec![0u8; HEADER_LEN];
        format::emit_header(&h, &mut header).unwrap();
        let _ = Volume::parse(&header, &index, medium);
    }

    /// Well-formed entries with random fields, then random byte changes, under a consistent
    /// header with a matching checksum: every entry check runs on hostile input.
    #[test]
    fn checksummed_mutated_index_never_panics(
        entries in proptest::collection::vec(("/[a-c./]{0,6}", 0u64..8, 0u64..20000, any::<u64>()), 0..6),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        count_delta in 0u64..3,
        data_blocks in 0u64..12,
    ) {
        let mut index = Vec::new();
        for (path, block, size, mtime) in &entries {
            let mut o = object(path, 8192 + block * 4096, *size);
            o.mtime = *mtime;
            let mut buf = vec![0u8; format::entry_len(&o)];
            // Paths the emitter refuses are written raw: the parser must refuse them itself.
            if format::emit_entry(&o, &mut buf).is_err() {
                buf[..8].copy_from_slice(&o.offset.to_le_bytes());
                buf[8..16].copy_from_slice(&o.size.to_le_bytes());
                buf[56..58].copy_from_slice(&(o.path.len() as u16).to_le_bytes());
                buf[58] = o.content_type.len() as u8;
                buf[59] = o.etag.len() as u8;
                let strings = [o.path.as_bytes(), o.content_type.as_bytes(), o.etag.as_bytes()].concat();
                buf[64..].copy_from_slice(&strings);
            }
            index.extend_from_slice(&buf);
        }
        if !index.is_empty() {
            for (at, value) in &edits {
                let i = at.index(index.len());
                index[i] = *value;
            }
        }
        let data_offset = HEADER_LEN as u64 + format::block_align(index.len() as u64).unwrap();
        let fields = HeaderFields {
            object_count: (entries.len() as u64 + count_delta).saturating_sub(1),
            index_offset: HEADER_LEN as u64,
            index_len: index.len() as u64,
            data_offset,
            data_len: data_blocks * 4096,
            total_len: data_offset + data_blocks * 4096,
            created: 0,
            index_sha256: Sha256::digest(&index).into(),
        };
        let mut header = vec![0u8; HEADER_LEN];
        format::emit_header(&fields, &mut header).unwrap();
        if let Ok(v) = Volume::parse(&header, &index, u64::MAX) {
            for o in v.objects() {
                prop_assert!(v.lookup(&o.path).is_some());
                prop_assert!(o.offset >= data_offset && o.offset + o.extent_len() <= v.total_len());
            }
        }
    }

    #[test]
    fn any_single_byte_corruption_is_detected(at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let (header, index, len) = real_volume();
        prop_assert!(Volume::parse(&header, &index, len).is_ok());
        let i = at.index(header.len() + index.len());
        let (mut header, mut index) = (header, index);
        if i < HEADER_LEN {
            header[i] ^= flip;
        } else {
            index[i - HEADER_LEN] ^= flip;
        }
        prop_assert!(Volume::parse(&header, &index, len).is_err(), "corruption at byte {} not detected", i);
    }
}

/// A small tree: URL paths (one or two directory levels, block-boundary sizes likely) and
/// contents; a path that would need a file to be a directory too is left out.
fn small_tree() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let name = "[a-z0-9][a-z0-9_-]{0,7}(\\.ts|\\.m3u8|\\.txt|\\.mp4|\\.bin|)";
    let size = prop_oneof![0usize..100, 4090usize..4100, 8190usize..8200, 0usize..30_000];
    proptest::collection::vec((proptest::collection::vec(name, 1..4), size, any::<u8>()), 1..10).prop_map(|files| {
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        for (parts, size, seed) in files {
            let path = format!("/{}", parts.join("/"));
            let clash = out.iter().any(|(p, _)| {
                p == &path || p.starts_with(&format!("{path}/")) || path.starts_with(&format!("{p}/"))
            });
            if !clash {
                out.push((path, pattern(size, seed)));
            }
        }
        out.sort();
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Pack then load: every file of an arbitrary small tree is found by its path, with its
    /// size, digest and bytes, and nothing else is in the volume.
    #[test]
    fn pack_then_load_round_trips_small_trees(files in small_tree()) {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        for (p, bytes) in &files {
            let full = src.join(&p[1..]);
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(&full, bytes).unwrap();
        }
        let vol = tmp.path().join("media.vol");
        pack(&src, &vol).unwrap();
        let mut storage = FileStorage::open(&vol).unwrap();
        let v = load(&mut storage).unwrap();
        prop_assert_eq!(v.objects().len(), files.len());
        for (p, bytes) in &files {
            let o = v.lookup(p).ok_or_else(|| TestCaseError::fail(format!("{p} not found")))?.clone();
            prop_assert_eq!(o.size, bytes.len() as u64);
            let digest: [u8; 32] = Sha256::digest(bytes).into();
            prop_assert_eq!(o.sha256, digest);
            prop_assert!(read_object(&mut storage, &o) == *bytes, "{} reads back different bytes", p);
        }
        prop_assert!(v.lookup("/no/such/file").is_none());
    }
}
