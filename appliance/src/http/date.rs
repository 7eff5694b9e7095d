//! HTTP dates: formatting IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) into a fixed buffer
//! and parsing the three formats RFC 9110 section 5.6.7 obliges recipients to accept.

/// Length of an IMF-fixdate.
pub const HTTP_DATE_LEN: usize = 29;

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const WEEKDAYS_LONG: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// 9999-12-31 23:59:59 UTC: the last instant a four-digit year can show.
const MAX_UNIX: u64 = 253_402_300_799;

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a date on or after it (`year >= 1970`, valid month and day).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = year - u64::from(month <= 2);
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn is_leap(year: u64) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn put_2digits(out: &mut [u8], n: u64) {
    out[0] = b'0' + (n / 10 % 10) as u8;
    out[1] = b'0' + (n % 10) as u8;
}

/// Formats `unix` (seconds since the epoch, UTC) as an IMF-fixdate. Times past year 9999 are
/// shown as 9999-12-31 23:59:59.
pub fn http_date(unix: u64, out: &mut [u8; HTTP_DATE_LEN]) {
    let unix = unix.min(MAX_UNIX);
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (year, month, day) = civil_from_days(days);
    let weekday = ((days + 4) % 7) as usize; // 1970-01-01 was a Thursday
    out.copy_from_slice(b"Thu, 01 Jan 1970 00:00:00 GMT");
    out[..3].copy_from_slice(WEEKDAYS[weekday].as_bytes());
    put_2digits(&mut out[5..7], day);
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize].as_bytes());
    put_2digits(&mut out[12..14], year / 100);
    put_2digits(&mut out[14..16], year % 100);
    put_2digits(&mut out[17..19], secs / 3600);
    put_2digits(&mut out[20..22], secs / 60 % 60);
    put_2digits(&mut out[23..25], secs % 60);
}

/// Formats `unix` (seconds since the epoch) as "YYYY-MM-DD HH:MM:SS UTC", for operators (the
/// console's certificate dates); times before 1970 as the epoch, past 9999 as its last second.
pub fn utc_timestamp(unix: i64) -> String {
    let unix = (unix.max(0) as u64).min(MAX_UNIX);
    let (year, month, day) = civil_from_days(unix / 86_400);
    let secs = unix % 86_400;
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs / 60 % 60, secs % 60)
}

fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0, |acc, &d| acc * 10 + u64::from(d - b'0')))
}

fn month_number(name: &[u8]) -> Option<u64> {
    MONTHS
        .iter()
        .position(|m| m.as_bytes() == name)
        .map(|i| i as u64 + 1)
}

/// "HH:MM:SS" -> seconds of the day (a leap second 60 counts as 59).
fn time_of_day(s: &[u8]) -> Option<u64> {
    let [h1, h2, b':', m1, m2, b':', s1, s2] = *s else {
        return None;
    };
    let (hour, minute, second) = (digits(&[h1, h2])?, digits(&[m1, m2])?, digits(&[s1, s2])?);
    (hour < 24 && minute < 60 && second <= 60).then(|| hour * 3600 + minute * 60 + second.min(59))
}

fn to_unix(year: u64, month: u64, day: u64, secs: u64) -> Option<u64> {
    if year < 1970 || !(1..=days_in_month(year, month)).contains(&day) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + secs)
}

/// Parses an HTTP date in IMF-fixdate, RFC 850 or asctime format into unix seconds.
/// Returns None for anything else and for dates before 1970. RFC 850's two-digit years are
/// 1970-2069. The weekday name is checked for form only, not against the date.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let b = s.trim_matches([' ', '\t']).as_bytes();
    let comma = b.iter().position(|&c| c == b',');
    match comma {
        // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
        Some(3) => {
            if b.len() != HTTP_DATE_LEN || !WEEKDAYS.iter().any(|w| w.as_bytes() == &b[..3]) {
                return None;
            }
            let r = &b[4..];
            if r[0] != b' ' || r[3] != b' ' || r[7] != b' ' || r[12] != b' ' || &r[21..] != b" GMT"
            {
                return None;
            }
            to_unix(
                digits(&r[8..12])?,
                month_number(&r[4..7])?,
                digits(&r[1..3])?,
                time_of_day(&r[13..21])?,
            )
        }
        // RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT"
        Some(n) => {
            if !WEEKDAYS_LONG.iter().any(|w| w.as_bytes() == &b[..n]) {
                return None;
            }
            let r = &b[n + 1..];
            if r.len() != 23
                || r[0] != b' '
                || r[3] != b'-'
                || r[7] != b'-'
                || r[10] != b' '
                || &r[19..] != b" GMT"
            {
                return None;
            }
            let yy = digits(&r[8..10])?;
            let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
            to_unix(
                year,
                month_number(&r[4..7])?,
                digits(&r[1..3])?,
                time_of_day(&r[11..19])?,
            )
        }
        // asctime: "Sun Nov  6 08:49:37 1994"
        None => {
            if b.len() != 24 || !WEEKDAYS.iter().any(|w| w.as_bytes() == &b[..3]) {
                return None;
            }
            if b[3] != b' ' || b[7] != b' ' || b[10] != b' ' || b[19] != b' ' {
                return None;
            }
            let day = match (b[8], b[9]) {
                (b' ', d) => digits(&[d])?,
                (d1, d2) => digits(&[d1, d2])?,
            };
            to_unix(
                digits(&b[20..24])?,
                month_number(&b[4..7])?,
                day,
                time_of_day(&b[11..19])?,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn utc_timestamps_for_operators() {
        assert_eq!(utc_timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_timestamp(-5), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_timestamp(1_796_083_200 + 3661), "2026-12-01 01:01:01 UTC");
        assert_eq!(utc_timestamp(i64::MAX), "9999-12-31 23:59:59 UTC");
    }

    fn fmt(unix: u64) -> String {
        let mut out = [0u8; HTTP_DATE_LEN];
        http_date(unix, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn formats_known_dates() {
        assert_eq!(fmt(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(fmt(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(fmt(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(fmt(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(fmt(4_102_444_799), "Thu, 31 Dec 2099 23:59:59 GMT");
        assert_eq!(fmt(u64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn parses_the_three_formats() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Sun Nov  6 08:49:37 1994"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Sun Nov 06 08:49:37 1994"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date(" Thu, 01 Jan 1970 00:00:00 GMT "), Some(0));
        assert_eq!(
            parse_http_date("Wednesday, 01-Jan-25 00:00:00 GMT"),
            Some(1_735_689_600)
        );
        assert_eq!(
            parse_http_date("Tue, 31 Dec 2024 23:59:60 GMT"),
            Some(1_735_689_599)
        );
    }

    #[test]
    fn rejects_bad_dates() {
        for bad in [
            "",
            "garbage",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 nov 1994 08:49:37 GMT",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 29 Feb 1900 08:49:37 GMT",
            "Sun, 00 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:60:00 GMT",
            "Sun, 06 Nov 1969 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT extra",
            "Sun, 06 Nov +994 08:49:37 GMT",
            "Sun, 06-Nov-94 08:49:37 GMT",
            "Sunday, 06 Nov 1994 08:49:37 GMT",
            "Sun Nov  6 08:49:37 94",
            "Sun Nov 6  08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 GMT\u{e9}",
            "\u{e9}\u{e9}, 06 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(unix in 0u64..=MAX_UNIX) {
            let s = fmt(unix);
            prop_assert_eq!(parse_http_date(&s), Some(unix));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = parse_http_date(&s);
        }

        #[test]
        fn parse_never_panics_on_near_dates(
            s in "[A-Za-z]{3,9}, [0-9 ]{2}[ -][A-Za-z]{3}[ -][0-9]{2,4} [0-9:]{8} GMT"
        ) {
            let _ = parse_http_date(&s);
        }
    }
}
