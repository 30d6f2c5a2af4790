//! Legacy date/time formats, compiled once and parsed without allocation.
//!
//! Pattern letters: `yyyy` (or `yy`, 2000-2099), `MM`/`M`, `dd`/`d`,
//! `HH`/`H`, `mm`, `ss`, `S…` (fraction, 1-9 digits, ignored beyond
//! nanoseconds). Every other character is a literal, except other ASCII
//! letters, which are rejected. Named formats: `unix` (seconds), `unix_ms`,
//! `rfc3339`, `hl7` (`YYYYMMDD[HHMM[SS[.S…]]][±ZZZZ]`).

use chrono::{DateTime, FixedOffset, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use chrono_tz::Tz;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Year4,
    Year2,
    Month(bool),
    Day(bool),
    Hour(bool),
    Minute,
    Second,
    Fraction(u8),
    Lit(char),
}

/// A compiled date/time format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateFormat {
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Pattern { toks: Vec<Tok>, has_time: bool },
    Unix,
    UnixMs,
    Rfc3339,
    Hl7,
}

/// The parts read from a value: a local date-time, and the offset if the
/// value carried one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// The wall-clock date and time (midnight for date-only values).
    pub local: NaiveDateTime,
    /// The offset written in the value, if any (`unix*` values are UTC).
    pub offset: Option<FixedOffset>,
    /// Whether the value had a time of day.
    pub has_time: bool,
}

impl DateFormat {
    /// Compiles a format; the error names the offending part.
    ///
    /// # Errors
    /// A message when the format has an unknown letter or a bad run length.
    pub fn compile(format: &str) -> Result<DateFormat, String> {
        let kind = match format {
            "unix" => Kind::Unix,
            "unix_ms" => Kind::UnixMs,
            "rfc3339" => Kind::Rfc3339,
            "hl7" => Kind::Hl7,
            _ => {
                let chars: Vec<char> = format.chars().collect();
                let mut toks = Vec::new();
                let mut i = 0;
                let (mut y, mut mo, mut d) = (false, false, false);
                let mut has_time = false;
                while i < chars.len() {
                    let c = chars[i];
                    let mut n = 1;
                    while i + n < chars.len() && chars[i + n] == c {
                        n += 1;
                    }
                    let tok = match (c, n) {
                        ('y', 4) => Some(Tok::Year4),
                        ('y', 2) => Some(Tok::Year2),
                        ('M', 1 | 2) => Some(Tok::Month(n == 2)),
                        ('d', 1 | 2) => Some(Tok::Day(n == 2)),
                        ('H', 1 | 2) => Some(Tok::Hour(n == 2)),
                        ('m', 2) => Some(Tok::Minute),
                        ('s', 2) => Some(Tok::Second),
                        ('S', 1..=9) => Some(Tok::Fraction(n as u8)),
                        _ if c.is_ascii_alphabetic() => {
                            return Err(format!(
                                "bad date format `{format}`: `{}` is not a pattern (use yyyy, yy, MM, M, dd, d, HH, H, mm, ss, S; or unix, unix_ms, rfc3339, hl7)",
                                c.to_string().repeat(n)
                            ));
                        }
                        _ => None,
                    };
                    match tok {
                        Some(t) => {
                            match t {
                                Tok::Year4 | Tok::Year2 => y = true,
                                Tok::Month(_) => mo = true,
                                Tok::Day(_) => d = true,
                                Tok::Hour(_) | Tok::Minute | Tok::Second => has_time = true,
                                _ => {}
                            }
                            toks.push(t);
                            i += n;
                        }
                        None => {
                            toks.push(Tok::Lit(c));
                            i += 1;
                        }
                    }
                }
                if !(y && mo && d) {
                    return Err(format!("bad date format `{format}`: needs a year, a month and a day"));
                }
                Kind::Pattern { toks, has_time }
            }
        };
        Ok(DateFormat { kind })
    }

    /// Parses a value. Never panics; `None` when the value does not match.
    pub fn parse(&self, s: &str) -> Option<Parsed> {
        match &self.kind {
            Kind::Pattern { toks, has_time } => parse_pattern(toks, *has_time, s.as_bytes()),
            Kind::Unix => {
                let secs: i64 = s.parse().ok()?;
                let dt = DateTime::from_timestamp(secs, 0)?;
                Some(Parsed {
                    local: dt.naive_utc(),
                    offset: Some(FixedOffset::east_opt(0)?),
                    has_time: true,
                })
            }
            Kind::UnixMs => {
                let ms: i64 = s.parse().ok()?;
                let dt = DateTime::from_timestamp_millis(ms)?;
                Some(Parsed {
                    local: dt.naive_utc(),
                    offset: Some(FixedOffset::east_opt(0)?),
                    has_time: true,
                })
            }
            Kind::Rfc3339 => {
                if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
                    return Some(Parsed {
                        local: dt.naive_local(),
                        offset: Some(*dt.offset()),
                        has_time: true,
                    });
                }
                let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
                Some(Parsed {
                    local: d.and_time(NaiveTime::MIN),
                    offset: None,
                    has_time: false,
                })
            }
            Kind::Hl7 => parse_hl7(s.as_bytes()),
        }
    }

    /// Parses a value and fixes it in time: a value with an offset keeps it;
    /// a naive one is read as wall-clock time in `zone` (the earlier instant
    /// when ambiguous, `None` when it does not exist, e.g. in a DST gap).
    pub fn parse_in(&self, s: &str, zone: Tz) -> Option<(DateTime<FixedOffset>, bool)> {
        let p = self.parse(s)?;
        if matches!(self.kind, Kind::Unix | Kind::UnixMs) {
            // an instant: show it in the configured zone
            return Some((zone.from_utc_datetime(&p.local).fixed_offset(), true));
        }
        let dt = match p.offset {
            Some(off) => off.from_local_datetime(&p.local).single()?,
            None => match zone.from_local_datetime(&p.local) {
                LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.fixed_offset(),
                LocalResult::None => return None,
            },
        };
        Some((dt, p.has_time))
    }
}

fn digits(b: &[u8], pos: &mut usize, min: usize, max: usize) -> Option<u32> {
    let mut v: u32 = 0;
    let mut n = 0;
    while n < max && *pos < b.len() && b[*pos].is_ascii_digit() {
        v = v * 10 + u32::from(b[*pos] - b'0');
        *pos += 1;
        n += 1;
    }
    if n < min { None } else { Some(v) }
}

fn parse_pattern(toks: &[Tok], has_time: bool, b: &[u8]) -> Option<Parsed> {
    let (mut y, mut mo, mut d, mut h, mut mi, mut s, mut ns) = (0i32, 0u32, 0u32, 0u32, 0u32, 0u32, 0u32);
    let mut pos = 0;
    for t in toks {
        match *t {
            Tok::Year4 => y = i32::try_from(digits(b, &mut pos, 4, 4)?).ok()?,
            Tok::Year2 => y = 2000 + i32::try_from(digits(b, &mut pos, 2, 2)?).ok()?,
            Tok::Month(two) => mo = digits(b, &mut pos, if two { 2 } else { 1 }, 2)?,
            Tok::Day(two) => d = digits(b, &mut pos, if two { 2 } else { 1 }, 2)?,
            Tok::Hour(two) => h = digits(b, &mut pos, if two { 2 } else { 1 }, 2)?,
            Tok::Minute => mi = digits(b, &mut pos, 2, 2)?,
            Tok::Second => s = digits(b, &mut pos, 2, 2)?,
            Tok::Fraction(n) => ns = fraction(b, &mut pos, usize::from(n))?,
            Tok::Lit(c) => {
                let mut buf = [0u8; 4];
                let lit = c.encode_utf8(&mut buf).as_bytes();
                if b.get(pos..pos + lit.len())? != lit {
                    return None;
                }
                pos += lit.len();
            }
        }
    }
    complete(b, pos, (y, mo, d), (h, mi, s, ns), None, has_time)
}

/// A fraction of a second of `min..=9` digits at `pos`, in nanoseconds.
fn fraction(b: &[u8], pos: &mut usize, min: usize) -> Option<u32> {
    let start = *pos;
    let v = digits(b, pos, min, 9)?;
    Some(v * 10u32.pow(9 - u32::try_from(*pos - start).ok()?))
}

/// The parsed value, if the input ended at `pos` and the fields make a
/// real date and time.
fn complete(
    b: &[u8],
    pos: usize,
    (y, mo, d): (i32, u32, u32),
    (h, mi, s, ns): (u32, u32, u32, u32),
    offset: Option<FixedOffset>,
    has_time: bool,
) -> Option<Parsed> {
    if pos != b.len() {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(y, mo, d)?;
    let time = NaiveTime::from_hms_nano_opt(h, mi, s, ns)?;
    Some(Parsed {
        local: date.and_time(time),
        offset,
        has_time,
    })
}

fn parse_hl7(b: &[u8]) -> Option<Parsed> {
    let digit_at = |pos: usize| b.get(pos).is_some_and(u8::is_ascii_digit);
    let mut pos = 0;
    let y = i32::try_from(digits(b, &mut pos, 4, 4)?).ok()?;
    // Month and day may be left out (they are then the first).
    let month_or_day = |pos: &mut usize| if digit_at(*pos) { digits(b, pos, 2, 2) } else { Some(1) };
    let mo = month_or_day(&mut pos)?;
    let d = month_or_day(&mut pos)?;
    let mut has_time = false;
    let (mut h, mut mi, mut s, mut ns) = (0, 0, 0, 0);
    if digit_at(pos) {
        has_time = true;
        h = digits(b, &mut pos, 2, 2)?;
        if digit_at(pos) {
            mi = digits(b, &mut pos, 2, 2)?;
            if digit_at(pos) {
                s = digits(b, &mut pos, 2, 2)?;
                if pos < b.len() && b[pos] == b'.' {
                    pos += 1;
                    ns = fraction(b, &mut pos, 1)?;
                }
            }
        }
    }
    let mut offset = None;
    if pos < b.len() && (b[pos] == b'+' || b[pos] == b'-') {
        let neg = b[pos] == b'-';
        pos += 1;
        let hh = i32::try_from(digits(b, &mut pos, 2, 2)?).ok()?;
        let mm = i32::try_from(digits(b, &mut pos, 2, 2)?).ok()?;
        let secs = (hh * 3600 + mm * 60) * if neg { -1 } else { 1 };
        offset = Some(FixedOffset::east_opt(secs)?);
    }
    complete(b, pos, (y, mo, d), (h, mi, s, ns), offset, has_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(f: &str, s: &str) -> Option<String> {
        DateFormat::compile(f)
            .ok()?
            .parse_in(s, chrono_tz::Asia::Shanghai)
            .map(|(d, _)| d.to_rfc3339())
    }

    #[test]
    fn legacy_formats() {
        const AT_0930: Option<&str> = Some("2024-03-05T09:30:00+08:00");
        const MIDNIGHT: Option<&str> = Some("2024-03-05T00:00:00+08:00");
        for (format, input, want) in [
            ("yyyyMMddHHmmss", "20240305093000", AT_0930),
            ("yyyy/MM/dd", "2024/03/05", MIDNIGHT),
            ("yyyy/M/d H:mm", "2024/3/5 9:30", AT_0930),
            ("yyyy年MM月dd日", "2024年03月05日", MIDNIGHT),
            ("unix", "1709602200", AT_0930),
            ("hl7", "20240305093000+0800", AT_0930),
            ("hl7", "20240305", MIDNIGHT),
            ("yyyyMMddHHmmss", "20240230093000", None),
            ("yyyyMMddHHmmss", "2024030509300", None),
        ] {
            assert_eq!(dt(format, input).as_deref(), want, "{format} {input}");
        }
        assert!(DateFormat::compile("yyyy-MM-dd hh:mm").is_err());
        assert!(DateFormat::compile("HH:mm").is_err());
    }

    #[test]
    fn dst_gap_in_new_york() {
        let f = DateFormat::compile("yyyy-MM-dd HH:mm").ok();
        let r = f.and_then(|f| f.parse_in("2024-03-10 02:30", chrono_tz::America::New_York));
        assert!(r.is_none());
    }
}
