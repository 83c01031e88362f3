//! EVTX files through the `evtx` crate (the parser Chainsaw and Hayabusa use).
//!
//! Each record is rendered to compact JSON bytes by the crate and flattened by
//! [`crate::json_events::flatten_event`], so EVTX and evtx_dump JSON inputs give identical events.
//! Events are named by `System.EventRecordID` from the record's XML, not by the record header's
//! id (they differ in 22,472 of the 25,062 corpus records: most sample files are exports whose
//! header ids restart at 1).
//!
//! A file that is not EVTX, or records that fail to parse, give warnings, never a panic; the
//! records that can be read are kept.

use std::panic::{AssertUnwindSafe, catch_unwind};

use evtx::{EvtxParser, ParserSettings};

use crate::corpus::LoadedFile;
use crate::event::FileId;
use crate::json_events::flatten_event;

/// EVTX files store records in chunks of 64 KiB after the file header.
const CHUNK_SIZE: u64 = 65_536;

/// Parses an EVTX file held in memory. `name` is the name events and warnings report.
pub fn load_evtx_bytes(name: &str, bytes: Vec<u8>) -> LoadedFile {
    let mut loaded = LoadedFile::new(name);
    if bytes.is_empty() {
        loaded.warn("empty file (no EVTX header); skipped".into());
        return loaded;
    }
    // The evtx crate is meant never to panic on bad input; if it ever does, one bad file must not
    // take the hunt down (natively; in Wasm a panic traps and the host replaces the instance).
    let outcome = catch_unwind(AssertUnwindSafe(|| parse_records(&mut loaded, bytes)));
    if outcome.is_err() {
        let kept = loaded.events.len();
        loaded.warn(format!("the EVTX parser failed on this file; kept the {kept} records read before the failure"));
    }
    loaded
}

fn parse_records(loaded: &mut LoadedFile, bytes: Vec<u8>) {
    let settings = ParserSettings::new().indent(false).separate_json_attributes(false).num_threads(0);
    let file_len = bytes.len() as u64;
    let mut parser = match EvtxParser::from_buffer(bytes) {
        Ok(p) => p.with_configuration(settings),
        Err(err) => {
            loaded.warn(format!("not a readable EVTX file ({err}); skipped"));
            return;
        }
    };
    // The parser walks the chunks that are in the file and says nothing about missing ones, so a
    // cut-off copy is detected here from the header's chunk count.
    let header = parser.header();
    let present = file_len.saturating_sub(u64::from(header.header_block_size)) / CHUNK_SIZE;
    let announced = u64::from(header.chunk_count);
    if present < announced {
        loaded.warn(format!(
            "the file is truncated: its header announces {announced} chunks of records but only {present} are complete; \
             the records of the missing part are lost"
        ));
    }
    let mut failed = 0usize;
    let mut first_error = None;
    let mut without_record_id = 0usize;
    for record in parser.records_json_bytes() {
        let record = match record {
            Ok(r) => r,
            Err(err) => {
                failed += 1;
                first_error.get_or_insert_with(|| err.to_string());
                continue;
            }
        };
        let flat = serde_json::from_slice(&record.data).map_err(|e| e.to_string()).and_then(|json| flatten_event(&json, &mut loaded.table));
        match flat {
            Ok(flat) => {
                if flat.record_id.is_none() {
                    without_record_id += 1;
                }
                // A record without System.EventRecordID is named by its header id.
                loaded.events.push(flat.into_event(FileId(0), record.event_record_id));
            }
            Err(err) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("record {}: {err}", record.event_record_id));
            }
        }
    }
    if failed > 0 {
        let first = first_error.unwrap_or_default();
        loaded.warn(format!("skipped {failed} records that could not be parsed (first: {first})"));
    }
    if without_record_id > 0 {
        loaded.warn(format!("{without_record_id} records have no System.EventRecordID; they are named by their EVTX record header id"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::Corpus;

    fn sample(rel: &str) -> Vec<u8> {
        let path = sigmaforge_data::for_tests().join("evtx").join(rel);
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    const SYSMON_FILE: &str = "evtx-attack-samples/Execution/sysmon_mshta_sharpshooter_stageless_meterpreter.evtx";

    #[test]
    fn a_real_file_gives_events_named_by_event_record_id() {
        let loaded = load_evtx_bytes("x.evtx", sample(SYSMON_FILE));
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(loaded.events.len(), 3);
        let mut b = Corpus::builder();
        b.add(loaded);
        let (c, _) = b.finish();
        let channel = c.field_key("Channel");
        assert!(c.events().iter().all(|e| e.values(channel).next().unwrap().text() == "Microsoft-Windows-Sysmon/Operational"));
        let rid = c.field_key("EventRecordID");
        for e in c.events() {
            assert_eq!(e.values(rid).next().unwrap().text(), e.record_id.to_string());
            assert!(e.timestamp_us.is_some());
        }
        assert!(c.field_key("Provider_Name") != crate::corpus::ABSENT_FIELD);
        assert!(c.field_key("Image") != crate::corpus::ABSENT_FIELD);
    }

    #[test]
    fn empty_random_and_truncated_files_warn_and_never_panic() {
        let empty = load_evtx_bytes("empty.evtx", Vec::new());
        assert!(empty.events.is_empty());
        assert!(empty.warnings[0].to_string().contains("empty.evtx"));

        // Deterministic pseudo-random bytes (xorshift), with and without a valid-looking magic.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut noise: Vec<u8> = (0..200_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let random = load_evtx_bytes("random.evtx", noise.clone());
        assert!(random.events.is_empty());
        assert!(!random.warnings.is_empty());
        noise[..8].copy_from_slice(b"ElfFile\0");
        let _ = load_evtx_bytes("magic.evtx", noise);

        let full = sample("hayabusa-sample-evtx/DeepBlueCLI/smb-password-guessing-security.evtx");
        let whole = load_evtx_bytes("whole.evtx", full.clone()).events.len();
        // This file announces 34 used chunks (of 49 allocated); cut inside the used ones.
        for cut in [4096 + 100, 4096 + 10 * 65_536 + 5000, 4096 + 33 * 65_536 + 30_000] {
            let truncated = load_evtx_bytes("cut.evtx", full[..cut].to_vec());
            assert!(truncated.events.len() < whole, "cut at {cut}");
            let warning = truncated.warnings.iter().find(|w| w.message.contains("truncated"));
            assert!(warning.is_some_and(|w| w.file == "cut.evtx"), "cut at {cut}: {:?}", truncated.warnings);
        }
        // A cut copy still yields the records of its complete chunks.
        assert!(load_evtx_bytes("half.evtx", full[..4096 + 17 * 65_536].to_vec()).events.len() > whole / 3);
    }
}
