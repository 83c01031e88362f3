//! BinXML at the byte level (MS-EVEN6 2.2.12): token values, little-endian reads, definition
//! spans, names in a chunk's string table, and a definition's canonical form.

// BinXML tokens (MS-EVEN6 2.2.12); 0x40 is a "more follows" bit on some of them.
pub(super) const END_OF_STREAM: u8 = 0x00;
pub(super) const OPEN_START_ELEMENT: u8 = 0x01;
pub(super) const CLOSE_START_ELEMENT: u8 = 0x02;
pub(super) const CLOSE_EMPTY_ELEMENT: u8 = 0x03;
pub(super) const END_ELEMENT: u8 = 0x04;
pub(super) const VALUE: u8 = 0x05;
pub(super) const ATTRIBUTE: u8 = 0x06;
pub(super) const TEMPLATE_INSTANCE: u8 = 0x0c;
pub(super) const NORMAL_SUBSTITUTION: u8 = 0x0d;
pub(super) const OPTIONAL_SUBSTITUTION: u8 = 0x0e;
pub(super) const FRAGMENT_HEADER: u8 = 0x0f;
pub(super) const MORE: u8 = 0x40;
/// The value type of a UTF-16 string.
pub(super) const STRING_TYPE: u8 = 0x01;
/// A `DependencyId` meaning none.
pub(super) const NO_DEPENDENCY: u16 = 0xffff;
/// A definition's header before its BinXML: next definition offset (u32), GUID, data size (u32).
pub(super) const DEFINITION_HEADER: usize = 24;
/// Deeper definitions are left to the crate (which has its own depth limits).
pub(super) const MAX_DEPTH: usize = 64;

pub(super) fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

pub(super) fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// Where the BinXML of the definition at `offset` lies in the chunk.
pub(super) fn definition_span(chunk: &[u8], offset: u32) -> Option<(usize, usize)> {
    let offset = offset as usize;
    let size = u32_at(chunk, offset.checked_add(20)?)? as usize;
    let start = offset + DEFINITION_HEADER;
    let end = start.checked_add(size)?;
    (end <= chunk.len()).then_some((start, end))
}

/// The stored UTF-16 bytes of the name at `offset` (after its next-offset u32, hash u16 and
/// character count u16).
pub(super) fn name_bytes(chunk: &[u8], offset: u32) -> Option<&[u8]> {
    let offset = offset as usize;
    let chars = usize::from(u16_at(chunk, offset.checked_add(6)?)?);
    chunk.get(offset + 8..offset + 8 + 2 * chars)
}

/// The canonical form of the definition in `chunk[start..end]` into `out`: its tokens, with
/// the names in place of name offsets and without the sizes that count inline names. `None`
/// for tokens [`Reader`] does not plan either.
pub(super) fn canonical(chunk: &[u8], start: usize, end: usize, out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    let data = &chunk[..end];
    let mut pos = start;
    // A name reference at `pos`: the name's length and characters instead of its offset.
    let name = |pos: &mut usize, out: &mut Vec<u8>| -> Option<()> {
        let offset = u32_at(data, *pos)?;
        *pos += 4;
        let raw = name_bytes(chunk, offset)?;
        if offset as usize == *pos {
            *pos += 8 + raw.len() + 2;
        }
        out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        out.extend_from_slice(raw);
        Some(())
    };
    while pos < end {
        let token = data[pos];
        out.push(token);
        pos += 1;
        match token {
            FRAGMENT_HEADER => {
                out.extend_from_slice(data.get(pos..pos + 3)?);
                pos += 3;
            }
            t if t & !MORE == OPEN_START_ELEMENT => {
                out.extend_from_slice(data.get(pos..pos + 2)?);
                pos += 6;
                name(&mut pos, out)?;
                if t & MORE != 0 {
                    pos += 4;
                }
            }
            t if t & !MORE == ATTRIBUTE => name(&mut pos, out)?,
            t if t & !MORE == VALUE => {
                if *data.get(pos)? != STRING_TYPE {
                    return None;
                }
                let chars = usize::from(u16_at(data, pos + 1)?);
                let value = data.get(pos..pos + 3 + 2 * chars)?;
                out.extend_from_slice(value);
                pos += value.len();
            }
            NORMAL_SUBSTITUTION | OPTIONAL_SUBSTITUTION => {
                out.extend_from_slice(data.get(pos..pos + 3)?);
                pos += 3;
            }
            END_OF_STREAM | CLOSE_START_ELEMENT | CLOSE_EMPTY_ELEMENT | END_ELEMENT => {}
            _ => return None,
        }
    }
    (pos == end).then_some(())
}

pub(super) fn utf16(bytes: &[u8]) -> Option<Box<str>> {
    let units = bytes.chunks_exact(2).map(|u| u16::from_le_bytes([u[0], u[1]]));
    char::decode_utf16(units).collect::<Result<String, _>>().ok().map(String::into_boxed_str)
}

pub(super) fn is_substitution(token: u8) -> bool {
    token == NORMAL_SUBSTITUTION || token == OPTIONAL_SUBSTITUTION
}

/// Where `part`, a slice of `chunk`, lies in it: BinXML offsets are chunk offsets, and the
/// crate hands embedded fragments and record windows out as slices.
pub(super) fn span_in(chunk: &[u8], part: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(chunk.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= chunk.len()).then_some(start..end)
}
