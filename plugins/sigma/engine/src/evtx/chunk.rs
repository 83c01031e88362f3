//! One chunk slot of an EVTX file: its checksums, and the repair that lets the `evtx` crate read
//! the complete records of a damaged or truncated chunk.
//!
//! Layout facts used here (libevtx's format notes): the file header takes 4 KiB, chunks 64 KiB
//! each; a chunk starts with `ElfChnk\0` and a 512-byte header whose CRC32 covers bytes 0..120
//! and 128..512, and whose second CRC32 covers the records (512..free space). A record starts
//! with the signature `**\0\0`, then its size (u32), its header id (u64) and a FILETIME, and it
//! ends with a copy of its size, which is what tells a complete record from a cut or overwritten
//! one.

use std::borrow::Cow;
use std::ops::RangeInclusive;

use crate::loaded_file::Checksum;

pub const FILE_HEADER_SIZE: usize = 4096;
pub const CHUNK_SIZE: usize = 65_536;
const CHUNK_HEADER_SIZE: usize = 512;
const CHUNK_MAGIC: &[u8; 8] = b"ElfChnk\0";
const RECORD_MAGIC: &[u8; 4] = b"**\0\0";
/// Record header (24 bytes) plus the trailing size copy.
const MIN_RECORD_SIZE: usize = 28;
/// The `NO_CRC32` flag of a chunk header.
const NO_CRC32: u32 = 0x4;

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

/// One 64 KiB chunk slot of a file, checked but not yet parsed.
pub struct ChunkSlot<'f> {
    pub number: u64,
    /// The slot's bytes (borrowed from the file), zero-padded to 64 KiB when the file ends
    /// inside it.
    pub data: Cow<'f, [u8]>,
    /// How many of those bytes the file really holds.
    pub present: usize,
    /// Whether every byte the file holds of it is zero (preallocated space, or a wiped chunk).
    blank: bool,
    /// `None` when the slot does not start with a chunk signature.
    pub header_checksum: Option<Checksum>,
    pub records_checksum: Option<Checksum>,
}

impl<'f> ChunkSlot<'f> {
    /// The slot `number` of `file`, or `None` past the file's end.
    pub fn read(file: &'f [u8], number: u64) -> Option<ChunkSlot<'f>> {
        let start = FILE_HEADER_SIZE + number as usize * CHUNK_SIZE;
        let bytes = file.get(start..(start + CHUNK_SIZE).min(file.len())).filter(|b| !b.is_empty())?;
        let data = if bytes.len() == CHUNK_SIZE {
            Cow::Borrowed(bytes)
        } else {
            let mut data = bytes.to_vec();
            data.resize(CHUNK_SIZE, 0);
            Cow::Owned(data)
        };
        // Word-wise OR over 64-byte blocks (vectorised), stopping at the first block with a
        // set bit: a chunk of records stops at once, a zeroed one is read once, not per question.
        let blank = bytes.chunks(64).all(|block| block.iter().fold(0u8, |acc, b| acc | b) == 0);
        let mut slot = ChunkSlot { number, data, present: bytes.len(), blank, header_checksum: None, records_checksum: None };
        if slot.data.starts_with(CHUNK_MAGIC) {
            let flags = u32_at(&slot.data, 120).unwrap_or(0);
            let verdict = |ok: bool| {
                if flags & NO_CRC32 != 0 {
                    Checksum::NotStored
                } else if ok {
                    Checksum::Ok
                } else {
                    Checksum::Mismatch
                }
            };
            let mut covered = [0u8; CHUNK_HEADER_SIZE - 8];
            covered[..120].copy_from_slice(&slot.data[..120]);
            covered[120..].copy_from_slice(&slot.data[128..CHUNK_HEADER_SIZE]);
            slot.header_checksum = Some(verdict(u32_at(&slot.data, 124) == Some(evtx::checksum_ieee(&covered))));
            let free = u32_at(&slot.data, 48).unwrap_or(0) as usize;
            let records = slot.data.get(CHUNK_HEADER_SIZE..free.max(CHUNK_HEADER_SIZE));
            slot.records_checksum = Some(verdict(records.is_some_and(|r| u32_at(&slot.data, 52) == Some(evtx::checksum_ieee(r)))));
        }
        Some(slot)
    }

    pub fn is_truncated(&self) -> bool {
        self.present < CHUNK_SIZE
    }

    pub fn is_blank(&self) -> bool {
        self.blank
    }

    /// A chunk the `evtx` crate can read as it is: complete, with matching checksums.
    pub fn is_intact(&self) -> bool {
        !self.is_truncated()
            && matches!(self.header_checksum, Some(Checksum::Ok | Checksum::NotStored))
            && matches!(self.records_checksum, Some(Checksum::Ok | Checksum::NotStored))
    }

    /// The header's record-number range, when the header's checksum vouches for it.
    pub fn trusted_range(&self) -> Option<RangeInclusive<u64>> {
        if !matches!(self.header_checksum, Some(Checksum::Ok)) || self.is_truncated() && self.present < CHUNK_HEADER_SIZE {
            return None;
        }
        let (first, last) = (u64_at(&self.data, 8)?, u64_at(&self.data, 16)?);
        // A chunk holds at most 64 KiB / 28 bytes of records.
        (first <= last && last - first < (CHUNK_SIZE / MIN_RECORD_SIZE) as u64).then_some(first..=last)
    }

    /// The lowest record id the header names, for putting chunks in record order.
    pub fn first_record_id(&self) -> Option<u64> {
        let (first, last) = (u64_at(&self.data, 24)?, u64_at(&self.data, 32)?);
        (self.header_checksum.is_some() && first <= last).then_some(first)
    }

    /// What is wrong with the chunk, in words (`None` when intact).
    pub fn problem(&self) -> Option<String> {
        let mut problems = Vec::new();
        if self.is_truncated() {
            problems.push(format!("the file ends {} bytes into it (truncated)", self.present));
        }
        match self.header_checksum {
            None => problems.push("its header has no chunk signature (damaged header)".to_string()),
            Some(Checksum::Mismatch) => problems.push("its header CRC32 does not match (damaged header)".to_string()),
            _ => {}
        }
        if self.records_checksum == Some(Checksum::Mismatch) && !self.is_truncated() {
            problems.push("the CRC32 of its records does not match (records altered after they were written; values may be wrong)".to_string());
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    /// The complete records in the slot, by scanning for record signatures: `(offset, size,
    /// header id)` of each record whose size fits in what the file holds and whose trailing size
    /// copy matches.
    fn scan_records(&self) -> Vec<(usize, usize, u64)> {
        let data = &self.data[..self.present];
        let mut found = Vec::new();
        let mut from = CHUNK_HEADER_SIZE;
        while let Some(hit) = data.get(from..).and_then(|rest| memchr::memmem::find(rest, RECORD_MAGIC)) {
            let at = from + hit;
            let size = u32_at(data, at + 4).unwrap_or(0) as usize;
            let complete = size >= MIN_RECORD_SIZE && at + size <= data.len() && u32_at(data, at + size - 4) == Some(size as u32);
            match u64_at(data, at + 8).filter(|_| complete) {
                Some(id) => {
                    found.push((at, size, id));
                    from = at + size;
                }
                None => from = at + 1,
            }
        }
        found
    }

    /// The records of [`Self::scan_records`] that belong to the chunk's live sequence: in the
    /// header's record range when the header is trusted, below the file's next record number
    /// (`below`), and each one after the previous with an id gap that the bytes between them
    /// could hold. Old records left in the chunk's slack by an earlier use of the chunk fail
    /// that test (their ids are far off), while records after a damaged stretch pass it.
    pub fn live_records(&self, below: Option<u64>) -> Vec<(usize, usize, u64)> {
        let range = self.trusted_range();
        let mut live: Vec<(usize, usize, u64)> = Vec::new();
        for record in self.scan_records() {
            let (at, _, id) = record;
            if range.as_ref().is_some_and(|r| !r.contains(&id)) || below.is_some_and(|b| id >= b) {
                continue;
            }
            if let Some(&(prev_at, prev_size, prev_id)) = live.last() {
                let room = (at.saturating_sub(prev_at + prev_size) / MIN_RECORD_SIZE) as u64;
                if id <= prev_id || id - prev_id - 1 > room {
                    continue;
                }
            }
            live.push(record);
        }
        live
    }

    /// A copy of the chunk with a header rebuilt around `records` (from [`Self::live_records`]),
    /// which the `evtx` crate reads like an intact chunk: signature, record range and free-space
    /// offset from the records found, no checksums, and empty string and template tables (they
    /// are only caches: the crate reads names and templates from the records themselves, and a
    /// damaged table would give wrong names).
    pub fn repaired(&self, records: &[(usize, usize, u64)]) -> Option<Vec<u8>> {
        let (&(first_at, _, _), &(last_at, last_size, last_id)) = (records.first()?, records.last()?);
        debug_assert!(first_at >= CHUNK_HEADER_SIZE);
        let min_id = records.iter().map(|r| r.2).min()?;
        let mut data = self.data.to_vec();
        data[..8].copy_from_slice(CHUNK_MAGIC);
        for (at, value) in [(8, min_id), (16, last_id), (24, min_id), (32, last_id)] {
            data[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        for (at, value) in [(40, 128), (44, last_at as u32), (48, (last_at + last_size) as u32), (52, 0), (120, NO_CRC32), (124, 0)] {
            data[at..at + 4].copy_from_slice(&u32::to_le_bytes(value));
        }
        data[128..CHUNK_HEADER_SIZE].fill(0);
        Some(data)
    }
}
