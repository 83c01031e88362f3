//! Parts of a timestamp for the Sigma 2.1 time modifiers (`minute`, `hour`, `day`, `week`,
//! `month`, `year`). Plain civil-date arithmetic (UTC), so no date library is needed in Wasm.

use super::modifier::Modifier;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DateTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
}

impl DateTime {
    /// `YYYY-MM-DD`, optionally followed by `T` or a space and `HH:MM[:SS[.frac]]`, and an
    /// optional `Z` or offset (ignored: EVTX times are UTC).
    pub fn parse(s: &str) -> Option<DateTime> {
        let s = s.trim();
        let b = s.as_bytes();
        let num = |r: std::ops::Range<usize>| -> Option<u32> {
            let part = s.get(r)?;
            if part.bytes().all(|c| c.is_ascii_digit()) { part.parse().ok() } else { None }
        };
        if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let (year, month, day) = (num(0..4)? as i64, num(5..7)?, num(8..10)?);
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        let (mut hour, mut minute) = (0, 0);
        if b.len() > 10 {
            if !(b[10] == b'T' || b[10] == b' ') || b.len() < 16 || b[13] != b':' {
                return None;
            }
            hour = num(11..13)?;
            minute = num(14..16)?;
            if hour > 23 || minute > 59 {
                return None;
            }
        }
        Some(DateTime { year, month, day, hour, minute })
    }

    pub fn from_unix_micros(us: i64) -> DateTime {
        let secs = us.div_euclid(1_000_000);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        DateTime { year, month, day, hour: (rem / 3600) as u32, minute: (rem % 3600 / 60) as u32 }
    }

    /// The part a time modifier extracts; `week` is the ISO 8601 week number (1–53).
    pub fn part(&self, m: Modifier) -> i64 {
        match m {
            Modifier::Minute => self.minute as i64,
            Modifier::Hour => self.hour as i64,
            Modifier::Day => self.day as i64,
            Modifier::Month => self.month as i64,
            Modifier::Year => self.year,
            Modifier::Week => self.iso_week(),
            _ => unreachable!("not a time modifier"),
        }
    }

    fn iso_week(&self) -> i64 {
        let days = days_from_civil(self.year, self.month, self.day);
        let weekday = (days + 3).rem_euclid(7) + 1; // 1970-01-01 was a Thursday; Monday = 1
        let ordinal = days - days_from_civil(self.year, 1, 1) + 1;
        let week = (ordinal - weekday + 10).div_euclid(7);
        if week < 1 {
            weeks_in_year(self.year - 1)
        } else if week > weeks_in_year(self.year) {
            1
        } else {
            week
        }
    }
}

fn weeks_in_year(y: i64) -> i64 {
    let p = |y: i64| (y + y.div_euclid(4) - y.div_euclid(100) + y.div_euclid(400)).rem_euclid(7);
    if p(y) == 4 || p(y - 1) == 3 { 53 } else { 52 }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_evtx_and_iso_forms() {
        let d = DateTime::parse("2019-03-19T23:34:25.123456Z").unwrap();
        assert_eq!((d.year, d.month, d.day, d.hour, d.minute), (2019, 3, 19, 23, 34));
        assert_eq!(DateTime::parse("2019-03-19 01:02:03.000").unwrap().hour, 1);
        assert_eq!(DateTime::parse("2019-03-19").unwrap().hour, 0);
        assert!(DateTime::parse("2019/03/19").is_none());
        assert!(DateTime::parse("2019-02-30").is_none());
        assert!(DateTime::parse("yesterday").is_none());
    }

    #[test]
    fn unix_micros_round_trip_and_iso_weeks() {
        // 2019-03-19T23:34:25Z = 1553038465 s
        let d = DateTime::from_unix_micros(1_553_038_465_000_000);
        assert_eq!(d, DateTime::parse("2019-03-19T23:34:25Z").unwrap());
        assert_eq!(DateTime::parse("2021-01-03").unwrap().part(Modifier::Week), 53); // Sunday of 2020-W53
        assert_eq!(DateTime::parse("2021-01-04").unwrap().part(Modifier::Week), 1);
        assert_eq!(DateTime::parse("2024-12-30").unwrap().part(Modifier::Week), 1); // 2025-W01
        assert_eq!(DateTime::parse("2019-03-19").unwrap().part(Modifier::Week), 12);
    }
}
