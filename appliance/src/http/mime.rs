//! Content-Type from a path's file extension (case-insensitive), for media libraries.

/// Extension -> media type. Every type here is at most `MAX_CONTENT_TYPE_LEN` bytes.
const TYPES: &[(&str, &str)] = &[
    ("m3u8", "application/vnd.apple.mpegurl"),
    ("m3u", "audio/mpegurl"),
    ("ts", "video/mp2t"),
    ("m4s", "video/iso.segment"),
    ("mp4", "video/mp4"),
    ("m4v", "video/mp4"),
    ("m4a", "audio/mp4"),
    ("mpd", "application/dash+xml"),
    ("aac", "audio/aac"),
    ("mp3", "audio/mpeg"),
    ("webm", "video/webm"),
    ("mkv", "video/x-matroska"),
    ("vtt", "text/vtt; charset=utf-8"),
    ("json", "application/json"),
    ("html", "text/html; charset=utf-8"),
    ("htm", "text/html; charset=utf-8"),
    ("txt", "text/plain; charset=utf-8"),
    ("css", "text/css; charset=utf-8"),
    ("js", "text/javascript; charset=utf-8"),
    ("xml", "application/xml"),
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("gif", "image/gif"),
    ("svg", "image/svg+xml"),
    ("ico", "image/x-icon"),
    ("webp", "image/webp"),
];

/// Fallback for unknown or missing extensions.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// The Content-Type for a path, from the extension of its last segment.
pub fn content_type_for(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let Some((_, ext)) = name.rsplit_once('.') else {
        return DEFAULT_CONTENT_TYPE;
    };
    TYPES
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(ext))
        .map_or(DEFAULT_CONTENT_TYPE, |&(_, ty)| ty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::MAX_CONTENT_TYPE_LEN;

    #[test]
    fn known_extensions() {
        assert_eq!(
            content_type_for("/live/index.m3u8"),
            "application/vnd.apple.mpegurl"
        );
        assert_eq!(content_type_for("/seg/00001.ts"), "video/mp2t");
        assert_eq!(content_type_for("/dash/chunk-1.m4s"), "video/iso.segment");
        assert_eq!(content_type_for("/movie.MP4"), "video/mp4");
        assert_eq!(content_type_for("/manifest.mpd"), "application/dash+xml");
        assert_eq!(content_type_for("/a.json"), "application/json");
        assert_eq!(content_type_for("/index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type_for("/readme.txt"), "text/plain; charset=utf-8");
    }

    #[test]
    fn unknown_or_missing_extension() {
        assert_eq!(content_type_for("/file.bin"), DEFAULT_CONTENT_TYPE);
        assert_eq!(content_type_for("/noext"), DEFAULT_CONTENT_TYPE);
        assert_eq!(content_type_for("/dir.mp4/noext"), DEFAULT_CONTENT_TYPE);
        assert_eq!(content_type_for("/trailing."), DEFAULT_CONTENT_TYPE);
        assert_eq!(content_type_for(""), DEFAULT_CONTENT_TYPE);
    }

    #[test]
    fn every_type_fits_the_head_budget() {
        assert!(TYPES.iter().all(|(_, ty)| ty.len() <= MAX_CONTENT_TYPE_LEN));
    }
}
