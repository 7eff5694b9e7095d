//! Content types by file extension, fixed when a volume is packed.

/// (extension, content type); extensions are matched case-insensitively.
const TYPES: &[(&str, &str)] = &[
    ("m3u8", "application/vnd.apple.mpegurl"),
    ("ts", "video/mp2t"),
    ("m4s", "video/iso.segment"),
    ("mp4", "video/mp4"),
    ("m4a", "audio/mp4"),
    ("m4v", "video/mp4"),
    ("mpd", "application/dash+xml"),
    ("json", "application/json"),
    ("html", "text/html; charset=utf-8"),
    ("htm", "text/html; charset=utf-8"),
    ("txt", "text/plain; charset=utf-8"),
    ("css", "text/css"),
    ("js", "text/javascript"),
    ("vtt", "text/vtt"),
    ("xml", "application/xml"),
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("gif", "image/gif"),
    ("svg", "image/svg+xml"),
    ("webp", "image/webp"),
    ("ico", "image/x-icon"),
    ("webm", "video/webm"),
    ("aac", "audio/aac"),
    ("mp3", "audio/mpeg"),
    ("key", "application/octet-stream"),
];

const DEFAULT: &str = "application/octet-stream";

/// The content type for a path, from the extension of its last segment (case-insensitive);
/// `application/octet-stream` when there is none or it is unknown.
pub fn content_type_for(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let Some((stem, ext)) = name.rsplit_once('.') else {
        return DEFAULT;
    };
    if stem.is_empty() {
        // A dot file such as ".ts" has no extension.
        return DEFAULT;
    }
    TYPES.iter().find(|(e, _)| e.eq_ignore_ascii_case(ext)).map_or(DEFAULT, |&(_, ct)| ct)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_extensions_in_any_case() {
        assert_eq!(content_type_for("/live/index.m3u8"), "application/vnd.apple.mpegurl");
        assert_eq!(content_type_for("/live/SEG-1.TS"), "video/mp2t");
        assert_eq!(content_type_for("/a/b/c.m4s"), "video/iso.segment");
        assert_eq!(content_type_for("/movie.Mp4"), "video/mp4");
        assert_eq!(content_type_for("/manifest.mpd"), "application/dash+xml");
        assert_eq!(content_type_for("/x.json"), "application/json");
        assert_eq!(content_type_for("/index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type_for("/index.HTM"), "text/html; charset=utf-8");
        assert_eq!(content_type_for("/readme.txt"), "text/plain; charset=utf-8");
        assert_eq!(content_type_for("/p.jpeg"), "image/jpeg");
        assert_eq!(content_type_for("/k.key"), "application/octet-stream");
        assert_eq!(content_type_for("/a.tar.mp3"), "audio/mpeg");
    }

    #[test]
    fn unknown_or_missing_extensions_are_octet_stream() {
        for p in ["/Makefile", "/a.unknown", "/dir.ts/file", "/.ts", "/trailing.", ""] {
            assert_eq!(content_type_for(p), "application/octet-stream", "{p}");
        }
    }
}
