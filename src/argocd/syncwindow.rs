//! Whether a project's sync window is open now, decided the way Argo CD decides it
//! (`SyncWindow.active`: a standard five-field cron schedule in the window's time zone, and a Go
//! duration; the window is open when the schedule fired within the last `duration`).
//!
//! Hand-written on purpose: the cron crates speak other dialects (seconds first, Sunday = 1,
//! different day-of-month/day-of-week rules), and Argo CD's is robfig/cron's standard parser:
//! minute, hour, day of month, month (or `JAN`–`DEC`), day of week (0–7 or `SUN`–`SAT`, 0 and 7
//! both Sunday), with `*`, `?`, lists, ranges and steps, the `@hourly`-style descriptors, and
//! robfig's rule that when day of month or day of week is `*` both must match, otherwise either.

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// Why a window's activity cannot be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// The schedule is not a cron expression this parser reads.
    #[error("cannot read schedule {0:?}")]
    Schedule(String),
    /// The duration is not a Go duration.
    #[error("cannot read duration {0:?}")]
    Duration(String),
    /// The time zone is unknown here.
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
}

/// One parsed cron field: the allowed values as a bit set, and whether it was `*` or `?`.
#[derive(Debug, Clone, Copy)]
struct Field {
    bits: u64,
    star: bool,
}

impl Field {
    fn has(&self, v: i8) -> bool {
        v >= 0 && self.bits & (1u64 << v) != 0
    }
}

/// A standard five-field schedule.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    minute: Field,
    hour: Field,
    dom: Field,
    month: Field,
    dow: Field,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(text: &str, names: &[&str], offset: u32) -> Option<u32> {
    if let Ok(v) = text.parse() {
        return Some(v);
    }
    let lower = text.to_ascii_lowercase();
    names.iter().position(|n| *n == lower).map(|i| i as u32 + offset)
}

fn field(text: &str, min: u32, max: u32, names: &[&str], name_offset: u32) -> Option<Field> {
    let mut bits = 0u64;
    let mut star = false;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().ok().filter(|s| *s > 0)?),
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            star = star || step == 1;
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, names, name_offset)?, value(b, names, name_offset)?)
        } else {
            let v = value(range, names, name_offset)?;
            // "5/15" means from 5 to the end, every 15.
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return None;
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1u64 << v;
            v += step;
        }
    }
    Some(Field { bits, star })
}

impl Schedule {
    /// Parses a five-field expression or a descriptor (`@yearly`, `@monthly`, `@weekly`,
    /// `@daily`, `@midnight`, `@hourly`).
    pub fn parse(text: &str) -> Result<Self, WindowError> {
        let bad = || WindowError::Schedule(text.to_owned());
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        let [m, h, dom, mon, dow] = parts.as_slice() else {
            return Err(bad());
        };
        let mut dow = field(dow, 0, 7, &DAYS, 0).ok_or_else(bad)?;
        // 7 is Sunday too.
        if dow.bits & (1 << 7) != 0 {
            dow.bits = (dow.bits & !(1 << 7)) | 1;
        }
        Ok(Self {
            minute: field(m, 0, 59, &[], 0).ok_or_else(bad)?,
            hour: field(h, 0, 23, &[], 0).ok_or_else(bad)?,
            dom: field(dom, 1, 31, &[], 0).ok_or_else(bad)?,
            month: field(mon, 1, 12, &MONTHS, 1).ok_or_else(bad)?,
            dow,
        })
    }

    /// Whether the schedule fires at this (minute-precise) local time.
    fn fires_at(&self, t: DateTime) -> bool {
        let day = if self.dom.star || self.dow.star {
            self.dom.has(t.day()) && self.dow.has(t.weekday().to_sunday_zero_offset())
        } else {
            self.dom.has(t.day()) || self.dow.has(t.weekday().to_sunday_zero_offset())
        };
        self.minute.has(t.minute()) && self.hour.has(t.hour()) && self.month.has(t.month()) && day
    }
}

/// Parses a Go duration (`1h`, `30m`, `1h30m`, `90s`, `1.5h`).
pub fn parse_go_duration(text: &str) -> Result<SignedDuration, WindowError> {
    let bad = || WindowError::Duration(text.to_owned());
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_end);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let secs = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return Err(bad()),
        };
        total += n * secs;
        rest = tail;
    }
    Ok(SignedDuration::from_secs_f64(total))
}

/// The longest window looked back over: a schedule is searched minute by minute.
const MAX_LOOKBACK: SignedDuration = SignedDuration::from_hours(24 * 62);

/// Whether a window with this schedule, duration and time zone is open at `now`: the schedule
/// fired within the last `duration` (Argo CD: the next start after `now - duration` is before
/// `now`).
pub fn active(schedule: &str, duration: &str, time_zone: &str, now: Timestamp) -> Result<bool, WindowError> {
    let schedule = Schedule::parse(schedule)?;
    let duration = parse_go_duration(duration)?.min(MAX_LOOKBACK);
    let tz = if time_zone.trim().is_empty() {
        TimeZone::UTC
    } else {
        TimeZone::get(time_zone.trim()).map_err(|_| WindowError::TimeZone(time_zone.to_owned()))?
    };
    let Ok(start) = now.checked_sub(duration) else {
        return Ok(false);
    };
    // Minutes after `start` up to and including `now`'s minute, in the window's local time.
    let mut t = start
        .checked_add(SignedDuration::from_secs(60 - start.as_second().rem_euclid(60)))
        .unwrap_or(start);
    while t <= now {
        let local = tz.to_datetime(t);
        if schedule.fires_at(local) {
            return Ok(true);
        }
        let Ok(next) = t.checked_add(SignedDuration::from_mins(1)) else {
            break;
        };
        t = next;
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn windows_open_and_close_like_argo_cd() {
        // From docs/operator-manual/project.yaml: "10 1 * * *" for 1h.
        assert!(active("10 1 * * *", "1h", "", at("2026-03-02T01:30:00Z")).unwrap());
        assert!(!active("10 1 * * *", "1h", "", at("2026-03-02T02:11:00Z")).unwrap());
        assert!(!active("10 1 * * *", "1h", "", at("2026-03-02T01:09:00Z")).unwrap());
        assert!(active("0 9 * * *", "8h", "", at("2026-03-02T16:59:00Z")).unwrap());
        // In a time zone: 22:00 in Berlin (UTC+1 in March) is 21:00 UTC.
        assert!(active("0 22 * * *", "1h", "Europe/Berlin", at("2026-03-02T21:30:00Z")).unwrap());
        assert!(!active("0 22 * * *", "1h", "Europe/Berlin", at("2026-03-02T22:30:00Z")).unwrap());
        // Day of week with names, ranges and Sunday as 7; 2026-03-01 is a Sunday.
        assert!(active("0 0 * * 7", "24h", "", at("2026-03-01T12:00:00Z")).unwrap());
        assert!(active("0 0 * * SUN", "24h", "", at("2026-03-01T12:00:00Z")).unwrap());
        assert!(!active("0 0 * * MON-FRI", "24h", "", at("2026-03-01T12:00:00Z")).unwrap());
        // Day of month OR day of week when both are restricted.
        assert!(active("0 0 15 * MON", "1h", "", at("2026-03-02T00:30:00Z")).unwrap());
        assert!(active("*/15 * * * *", "1m", "", at("2026-03-02T10:45:30Z")).unwrap());
        assert!(active("@daily", "1h30m", "", at("2026-03-02T01:29:00Z")).unwrap());
    }

    #[test]
    fn unreadable_windows_are_errors() {
        let now = at("2026-03-02T00:00:00Z");
        assert!(matches!(
            active("61 * * * *", "1h", "", now),
            Err(WindowError::Schedule(_))
        ));
        assert!(matches!(
            active("* * * *", "1h", "", now),
            Err(WindowError::Schedule(_))
        ));
        assert!(matches!(
            active("* * * * *", "1y", "", now),
            Err(WindowError::Duration(_))
        ));
        assert!(matches!(
            active("* * * * *", "1h", "Mars/Base", now),
            Err(WindowError::TimeZone(_))
        ));
        assert_eq!(parse_go_duration("1h30m").unwrap(), SignedDuration::from_mins(90));
        assert_eq!(parse_go_duration("1.5h").unwrap(), SignedDuration::from_mins(90));
    }
}
