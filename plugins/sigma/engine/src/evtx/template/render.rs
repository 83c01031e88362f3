//! Values written as text the way the evtx crate renders them.

use std::fmt::Write as _;

use crate::event::ValueKind;

/// A SID as the crate writes it: `S-revision-authority-sub…`.
pub(super) fn write_sid(out: &mut String, sid: &[u8]) {
    let &[revision, count, a0, a1, a2, a3, a4, a5, ref subs @ ..] = sid else {
        out.push_str("S-?");
        return;
    };
    let authority = u64::from_be_bytes([0, 0, a0, a1, a2, a3, a4, a5]);
    let _ = write!(out, "S-{revision}-{authority}");
    for sub in subs.chunks_exact(4).take(usize::from(count)) {
        let _ = write!(out, "-{}", u32::from_le_bytes([sub[0], sub[1], sub[2], sub[3]]));
    }
}

/// An integer in decimal, as JSON writes it; gives the kind of value it is.
pub(super) fn write_integer(out: &mut String, n: impl itoa::Integer) -> ValueKind {
    out.push_str(itoa::Buffer::new().format(n));
    ValueKind::Number
}

// The crate's renderings of the common non-text values, written here without its `Display`
// (which allocates twice per value); `renderings_match_the_crates` holds them to it.

pub(super) const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";
pub(super) const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// A GUID as Windows writes it: `{d1-d2-d3-d4[0..2]-d4[2..8]}`, lower case, the first three
/// parts little-endian.
pub(super) fn write_guid(out: &mut String, bytes: &[u8; 16]) {
    const ORDER: [usize; 16] = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
    out.push('{');
    for (i, &at) in ORDER.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(HEX_LOWER[usize::from(bytes[at] >> 4)] as char);
        out.push(HEX_LOWER[usize::from(bytes[at] & 0xf)] as char);
    }
    out.push('}');
}

/// `0x` and lower-case hex digits, no leading zeros.
pub(super) fn write_hex(out: &mut String, value: u64) {
    out.push_str("0x");
    let digits = (64 - value.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        out.push(HEX_LOWER[((value >> (4 * shift)) & 0xf) as usize] as char);
    }
}

/// Binary as upper-case hex, two digits a byte.
pub(super) fn write_binary(out: &mut String, bytes: &[u8]) {
    out.reserve(2 * bytes.len());
    for b in bytes {
        out.push(HEX_UPPER[usize::from(b >> 4)] as char);
        out.push(HEX_UPPER[usize::from(b & 0xf)] as char);
    }
}

/// A FILETIME (100 ns ticks since 1601-01-01 UTC) as `YYYY-MM-DDTHH:MM:SS.fffffffZ`, as
/// Windows writes it: the year's last four digits, zeros for a value past `i64::MAX`.
pub(super) fn write_filetime(out: &mut String, filetime: u64) {
    const TICKS_PER_SECOND: u64 = 10_000_000;
    const TICKS_PER_DAY: u64 = 86_400 * TICKS_PER_SECOND;
    if filetime > i64::MAX as u64 {
        out.push_str("0000-00-00T00:00:00.0000000Z");
        return;
    }
    let (days, ticks) = (filetime / TICKS_PER_DAY, filetime % TICKS_PER_DAY);
    let (year, month, day) = civil_date(days);
    let seconds = ticks / TICKS_PER_SECOND;
    let _ = write!(
        out,
        "{:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:07}Z",
        year % 10_000,
        seconds / 3_600,
        seconds / 60 % 60,
        seconds % 60,
        ticks % TICKS_PER_SECOND
    );
}

/// The Gregorian (year, month, day) `days` after 1601-01-01: days counted from 0000-03-01 in
/// 400-year eras of 146,097 days, years starting in March so that February comes last.
pub(super) fn civil_date(days: u64) -> (u64, u64, u64) {
    // 1601-01-01 is 584,694 days after 0000-03-01.
    let from_march_0 = days + 584_694;
    let (era, day_of_era) = (from_march_0 / 146_097, from_march_0 % 146_097);
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    (era * 400 + year_of_era + u64::from(month <= 2), month, day)
}

/// UTF-16LE text up to its first NUL, as the crate renders it (unpaired surrogates replaced).
pub(super) fn write_utf16(out: &mut String, bytes: &[u8]) {
    let units = &bytes[..bytes.len() & !1];
    let end = units.chunks_exact(2).position(|u| u == [0, 0]).map_or(units.len(), |i| 2 * i);
    let units = &units[..end];
    // Nearly all event text is ASCII: every unit's high byte is zero and its low byte is the
    // character, copied over through a small buffer without decoding.
    if units.chunks_exact(2).all(|u| u[1] == 0 && u[0] < 0x80) {
        out.reserve(units.len() / 2);
        let mut buffer = [0u8; 256];
        for block in units.chunks(2 * buffer.len()) {
            let n = block.len() / 2;
            for (b, u) in buffer.iter_mut().zip(block.chunks_exact(2)) {
                *b = u[0];
            }
            out.push_str(std::str::from_utf8(&buffer[..n]).expect("ASCII"));
        }
        return;
    }
    let decoded = units.chunks_exact(2).map(|u| u16::from_le_bytes([u[0], u[1]]));
    out.extend(char::decode_utf16(decoded).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)));
}
