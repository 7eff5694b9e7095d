//! End to end: the real binary packs a tree, inspects the volume, and refuses corrupt copies.
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

fn appliance(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_appliance")).args(args).env("RUST_LOG", "warn").output().expect("run appliance")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn pack_then_inspect_then_refuse_corrupt_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("library");
    fs::create_dir_all(src.join("hls/360p")).unwrap();
    let segment: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let files: [(&str, &[u8], &str); 4] = [
        ("/index.html", b"<!doctype html><title>library</title>", "text/html; charset=utf-8"),
        (
            "/hls/master.m3u8",
            b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000\n360p/index.m3u8\n",
            "application/vnd.apple.mpegurl",
        ),
        ("/hls/360p/index.m3u8", b"#EXTM3U\n#EXTINF:4.0,\nseg0.ts\n", "application/vnd.apple.mpegurl"),
        ("/hls/360p/seg0.ts", &segment, "video/mp2t"),
    ];
    for (path, bytes, _) in &files {
        fs::write(src.join(&path[1..]), bytes).unwrap();
    }
    let total: usize = files.iter().map(|(_, b, _)| b.len()).sum();
    let vol = tmp.path().join("library.vol");

    let out = appliance(&[Path::new("pack"), &src, &vol]);
    assert!(out.status.success(), "pack failed: {}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("packed 4 objects"), "{}", text(&out.stdout));

    let out = appliance(&[Path::new("inspect"), &vol]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "inspect failed: {stdout}{}", text(&out.stderr));
    for (path, bytes, ct) in &files {
        let line =
            stdout.lines().find(|l| l.starts_with(&format!("{path} "))).unwrap_or_else(|| panic!("{path}: {stdout}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((cols[1], cols[2..].join(" ").as_str()), (bytes.len().to_string().as_str(), *ct), "{line}");
    }
    assert!(stdout.contains(&format!("4 objects, {total} bytes, all checksums ok")), "{stdout}");

    // A flipped byte in the middle of the segment: listed, named as failed, exit status 1.
    let bad = tmp.path().join("bad-data.vol");
    fs::copy(&vol, &bad).unwrap();
    let bytes = fs::read(&bad).unwrap();
    let start = bytes.windows(4096).position(|w| w == &segment[..4096]).expect("segment extent");
    let at = start + 150_000;
    let f = fs::OpenOptions::new().write(true).open(&bad).unwrap();
    f.write_all_at(&[bytes[at] ^ 0x80], at as u64).unwrap();
    let out = appliance(&[Path::new("inspect"), &bad]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("FAILED /hls/360p/seg0.ts: checksum mismatch"), "{}", text(&out.stdout));
    assert!(text(&out.stderr).starts_with("error: 1 of 4 objects failed"), "{}", text(&out.stderr));

    // A corrupt index and a truncated copy are refused before anything is listed.
    let bad_index = tmp.path().join("bad-index.vol");
    fs::copy(&vol, &bad_index).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&bad_index).unwrap();
    f.write_all_at(&[bytes[4100] ^ 1], 4100).unwrap();
    let out = appliance(&[Path::new("inspect"), &bad_index]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("error: index checksum mismatch"), "{}", text(&out.stderr));

    let short = tmp.path().join("short.vol");
    fs::write(&short, &bytes[..bytes.len() - 8192]).unwrap();
    let out = appliance(&[Path::new("inspect"), &short]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("error: volume truncated"), "{}", text(&out.stderr));
}

#[test]
fn pack_refuses_an_empty_or_missing_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let vol = tmp.path().join("v.vol");
    let out = appliance(&[Path::new("pack"), &tmp.path().join("missing"), &vol]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("error: ") && text(&out.stderr).contains("no such directory"));
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let out = appliance(&[Path::new("pack"), &empty, &vol]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no regular files to pack"), "{}", text(&out.stderr));
    let out = appliance(&[Path::new("inspect"), &tmp.path().join("missing.vol")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("error: "), "{}", text(&out.stderr));
}
