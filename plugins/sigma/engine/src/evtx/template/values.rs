//! Substitution values: the record's and those of the instances embedded in them, decoded
//! from their bytes as the evtx crate decodes them.

use std::sync::Arc;

use evtx::Utf16LeSlice;
use evtx::binxml::value_variant::{BinXmlValue, FileTime, SysTime};

use super::Plans;
use super::binxml::*;
use super::plan::Plan;

/// One substitution value.
pub(super) enum Slot<'a> {
    Value(BinXmlValue<'a>),
    /// A SID's bytes (the crate's `SidRef` is built only by the crate).
    Sid(&'a [u8]),
    /// An embedded BinXML fragment: one template instance.
    Fragment(Instance<'a>),
    /// A string array: each item's UTF-16 bytes. The crate repeats the element holding it
    /// once per item; planned for positional `Data` only.
    Strings(Vec<&'a [u8]>),
}

pub(super) struct Instance<'a> {
    pub(super) plan: Arc<Plan>,
    pub(super) values: Vec<Slot<'a>>,
}

/// Embedded fragments nest at most this deep here (the crate has its own limit).
pub(super) const MAX_NESTING: usize = 8;

/// A record's BinXML or an embedded fragment (a slice of `chunk`): one template instance and
/// nothing else.
pub(super) fn fragment<'a>(chunk: &'a [u8], bytes: &'a [u8], plans: &mut Plans, depth: usize) -> Option<Instance<'a>> {
    if depth > MAX_NESTING {
        return None;
    }
    // Offsets in a fragment are chunk offsets: where the fragment lies in the chunk.
    let std::ops::Range { start, end } = span_in(chunk, bytes)?;
    let mut pos = start;
    if *chunk.get(pos)? == FRAGMENT_HEADER {
        pos += 4;
    }
    if *chunk.get(pos)? != TEMPLATE_INSTANCE {
        return None;
    }
    let definition = u32_at(chunk, pos + 6)?;
    pos += 10;
    if definition as usize == pos {
        // The definition is written here, on its first use in the chunk.
        pos = definition_span(chunk, definition)?.1;
    }
    let count = u32_at(chunk, pos)? as usize;
    pos += 4;
    let descriptors = chunk.get(pos..pos.checked_add(count.checked_mul(4)?)?)?;
    pos += descriptors.len();
    let mut values = Vec::with_capacity(count);
    for descriptor in descriptors.chunks_exact(4) {
        let size = usize::from(u16::from_le_bytes([descriptor[0], descriptor[1]]));
        let raw = chunk[..end].get(pos..pos + size)?;
        pos += size;
        values.push(decode(descriptor[2], raw, chunk, plans, depth)?);
    }
    // Only the end of the fragment may follow.
    if pos < end && chunk[pos] != END_OF_STREAM {
        return None;
    }
    Some(Instance { plan: plans.plan(chunk, definition)?, values })
}

/// A substitution value, from its type and bytes as the crate decodes them.
pub(super) fn decode<'a>(ty: u8, raw: &'a [u8], chunk: &'a [u8], plans: &mut Plans, depth: usize) -> Option<Slot<'a>> {
    use BinXmlValue::*;
    pub(super) fn le<const N: usize>(raw: &[u8]) -> Option<[u8; N]> {
        raw.try_into().ok()
    }
    Some(Slot::Value(match ty {
        0x00 => NullType,
        // Up to the first NUL, which the crate's decoding drops with what follows.
        0x01 if raw.len().is_multiple_of(2) => {
            let chars = raw.chunks_exact(2).position(|u| u == [0, 0]).unwrap_or(raw.len() / 2);
            StringType(Utf16LeSlice::new(&raw[..2 * chars], chars))
        }
        0x03 => Int8Type(i8::from_le_bytes(le(raw)?)),
        0x04 => UInt8Type(u8::from_le_bytes(le(raw)?)),
        0x05 => Int16Type(i16::from_le_bytes(le(raw)?)),
        0x06 => UInt16Type(u16::from_le_bytes(le(raw)?)),
        0x07 => Int32Type(i32::from_le_bytes(le(raw)?)),
        0x08 => UInt32Type(u32::from_le_bytes(le(raw)?)),
        0x09 => Int64Type(i64::from_le_bytes(le(raw)?)),
        0x0a => UInt64Type(u64::from_le_bytes(le(raw)?)),
        // Booleans other than 0 and 1 the crate keeps as integers.
        0x0d => match i32::from_le_bytes(le(raw)?) {
            0 => BoolType(false),
            1 => BoolType(true),
            _ => return None,
        },
        0x0e => BinaryType(raw),
        0x0f => GuidType(le(raw)?),
        0x11 => FileTimeType(FileTime(u64::from_le_bytes(le(raw)?))),
        0x12 => SysTimeType(SysTime::from_bytes(&le(raw)?)),
        0x13 => return Some(Slot::Sid(raw)),
        0x14 => HexInt32Type(u32::from_le_bytes(le(raw)?)),
        0x15 => HexInt64Type(u64::from_le_bytes(le(raw)?)),
        // NUL-terminated strings one after the other.
        0x81 if raw.len().is_multiple_of(2) && (raw.is_empty() || raw.ends_with(&[0, 0])) => {
            let mut items = Vec::new();
            let mut start = 0;
            for (i, unit) in raw.chunks_exact(2).enumerate() {
                if unit == [0, 0] {
                    items.push(&raw[start..2 * i]);
                    start = 2 * i + 2;
                }
            }
            return Some(Slot::Strings(items));
        }
        0x21 if raw.is_empty() => BinXmlType(raw),
        0x21 => return Some(Slot::Fragment(fragment(chunk, raw, plans, depth + 1)?)),
        _ => return None,
    }))
}

/// The crate's notion of an empty value (`is_optional_empty`): no content when rendered.
pub(super) fn is_empty(slot: &Slot<'_>) -> bool {
    match slot {
        Slot::Value(BinXmlValue::NullType) => true,
        Slot::Value(BinXmlValue::StringType(s)) => s.is_empty(),
        Slot::Value(BinXmlValue::BinaryType(b) | BinXmlValue::BinXmlType(b)) => b.is_empty(),
        Slot::Sid(b) => b.is_empty(),
        Slot::Strings(items) => items.is_empty(),
        _ => false,
    }
}
