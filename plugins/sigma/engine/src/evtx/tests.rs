//! The EVTX loader on real files, and on a corruption corpus generated from them.

use super::*;
use crate::corpus::Corpus;
use crate::loaded_file::FileIntegrity;

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
        let i = &truncated.integrity;
        if cut == 4096 + 100 {
            assert!(truncated.events.is_empty() && i.chunks_lost_uncounted == 1, "cut at {cut}: {i:?}");
        } else {
            // What was read and what is counted lost add up to the whole file (the last cut
            // falls after the last record of the last chunk: nothing is lost).
            assert_eq!(i.events + i.lost, whole as u64, "cut at {cut}: {i:?}");
        }
        let warning = truncated.warnings.iter().find(|w| w.message.contains("truncated"));
        assert!(warning.is_some_and(|w| w.file == "cut.evtx"), "cut at {cut}: {:?}", truncated.warnings);
    }
    // A cut copy still yields the records of its complete chunks.
    assert!(load_evtx_bytes("half.evtx", full[..4096 + 17 * 65_536].to_vec()).events.len() > whole / 3);
}

// The corruption corpus: real files damaged the ways files get damaged (a chunk zeroed, bits
// rotted, a cut copy, a chunk stored twice), each with the exact counts the loader must report.

/// 3 chunks: records 1-104, 105-210 and 211-295 (then 14 blank preallocated chunks).
const THREE_CHUNKS: &str = "hayabusa-sample-evtx/DeepBlueCLI/password-spray.evtx";
/// 1 chunk, 7 records, ending at chunk offsets 4232, 5808, 7360, 8136, 9792, 10504 and 11984.
const SEVEN_RECORDS: &str = "evtx-attack-samples/Privilege Escalation/RogueWinRM.evtx";
/// 1 chunk, 9 records.
const NINE_RECORDS: &str = "evtx-attack-samples/Credential Access/CA_sysmon_hashdump_cmd_meterpreter.evtx";
/// 1 chunk, 28 records.
const TWENTY_EIGHT_RECORDS: &str = "hayabusa-sample-evtx/EVTX-to-MITRE-Attack/TA0005-Defense Evasion/T1070.001-Clear Windows event logs/ID4688-Clear event log attempt (native).evtx";

fn chunk_range(n: usize) -> std::ops::Range<usize> {
    let start = FILE_HEADER_SIZE + n * CHUNK_SIZE;
    start..start + CHUNK_SIZE
}

/// Each event as (record id, sorted field name/value pairs), comparable across field tables.
fn contents(loaded: &LoadedFile) -> Vec<(u64, Vec<(String, String)>)> {
    loaded
        .events
        .iter()
        .map(|e| {
            let mut fields: Vec<_> = e.fields().iter().map(|(k, v)| (loaded.table.name(*k).to_string(), v.text().to_string())).collect();
            fields.sort();
            (e.record_id, fields)
        })
        .collect()
}

fn has_warning(loaded: &LoadedFile, text: &str) -> bool {
    loaded.warnings.iter().any(|w| w.message.contains(text))
}

#[test]
fn intact_files_read_the_same_whole_or_chunk_by_chunk() {
    for file in [THREE_CHUNKS, SEVEN_RECORDS, "hayabusa-sample-evtx/DeepBlueCLI/smb-password-guessing-security.evtx"] {
        let whole = load("f.evtx", &sample(file), false, None);
        let by_chunk = load("f.evtx", &sample(file), true, None);
        assert_eq!(contents(&whole), contents(&by_chunk), "{file}");
        assert!(whole.integrity.is_clean() && by_chunk.integrity.is_clean(), "{:?}", by_chunk.integrity);
        assert!(whole.warnings.is_empty() && by_chunk.warnings.is_empty(), "{:?}", by_chunk.warnings);
        assert_eq!(whole.integrity.header_checksum, Some(Checksum::Ok));
    }
    let three = load_evtx_bytes("f.evtx", sample(THREE_CHUNKS)).integrity;
    assert_eq!((three.events, three.chunks, three.chunks_intact), (295, Some(3), Some(3)));
}

#[test]
fn a_zeroed_only_chunk_is_reported_not_silent() {
    let mut bytes = sample(NINE_RECORDS);
    bytes[chunk_range(0)].fill(0);
    let loaded = load_evtx_bytes("z.evtx", bytes);
    assert!(loaded.events.is_empty());
    assert_eq!(loaded.integrity.damaged_chunks.len(), 1);
    assert_eq!(loaded.integrity.chunks_lost_uncounted, 1);
    assert!(!loaded.integrity.is_clean());
    assert!(has_warning(&loaded, "chunk 0: all zeros"), "{:?}", loaded.warnings);
}

#[test]
fn a_zeroed_middle_chunk_loses_exactly_its_records() {
    let mut bytes = sample(THREE_CHUNKS);
    bytes[chunk_range(1)].fill(0);
    let loaded = load_evtx_bytes("z.evtx", bytes);
    let i = &loaded.integrity;
    assert_eq!((i.events, i.lost, i.chunks_lost_uncounted, i.recovered), (189, 106, 0, 0), "{i:?}");
    assert!(has_warning(&loaded, "106 records are lost"), "{:?}", loaded.warnings);
}

#[test]
fn a_chunk_whose_records_crc_fails_keeps_its_records_and_says_so() {
    let intact = load_evtx_bytes("c.evtx", sample(NINE_RECORDS));
    let mut bytes = sample(NINE_RECORDS);
    // Rot one bit of a UTF-16 character in a value ("System32" becomes "Sxstem32").
    let chunk = &bytes[chunk_range(0)];
    let needle: Vec<u8> = "System32".encode_utf16().flat_map(u16::to_le_bytes).collect();
    let at = chunk_range(0).start + memchr::memmem::find(chunk, &needle).expect("the sample names System32") + 2;
    bytes[at] ^= 0x01;
    let loaded = load_evtx_bytes("c.evtx", bytes);
    let i = &loaded.integrity;
    assert_eq!((i.events, i.recovered, i.lost), (9, 9, 0), "{i:?}");
    assert_eq!(i.chunks_intact, Some(0));
    assert!(i.damaged_chunks[0].problem.contains("CRC32 of its records does not match"), "{i:?}");
    assert!(has_warning(&loaded, "chunk 0: the CRC32 of its records does not match"), "{:?}", loaded.warnings);
    // Same events and ids; one value differs.
    assert_eq!(contents(&loaded).iter().map(|e| e.0).collect::<Vec<_>>(), contents(&intact).iter().map(|e| e.0).collect::<Vec<_>>());
    assert_ne!(contents(&loaded), contents(&intact));
}

#[test]
fn one_flipped_byte_anywhere_in_a_chunk_header_loses_no_record() {
    let intact = contents(&load_evtx_bytes("h.evtx", sample(TWENTY_EIGHT_RECORDS)));
    assert_eq!(intact.len(), 28);
    let original = sample(TWENTY_EIGHT_RECORDS);
    for offset in 0..512 {
        let mut bytes = original.clone();
        bytes[chunk_range(0).start + offset] ^= 0xFF;
        let loaded = load_evtx_bytes("h.evtx", bytes);
        assert_eq!(contents(&loaded), intact, "byte {offset} flipped: {:?}", loaded.warnings);
        assert_eq!(loaded.integrity.lost, 0, "byte {offset}");
        // The flags (120..124) may now say "no CRC32"; every other byte is covered by one.
        if !(120..124).contains(&offset) {
            assert_eq!(loaded.integrity.damaged_chunks.len(), 1, "byte {offset}: {:?}", loaded.integrity);
            assert_eq!(loaded.integrity.recovered, 28, "byte {offset}");
        }
    }
}

#[test]
fn a_file_cut_inside_its_only_chunk_keeps_every_complete_record() {
    // (cut offset inside the chunk, complete records before it)
    for (cut, complete) in [(11_984, 7), (11_983, 6), (8_146, 4), (5_000, 1), (600, 0)] {
        let bytes = sample(SEVEN_RECORDS)[..FILE_HEADER_SIZE + cut].to_vec();
        let loaded = load_evtx_bytes("t.evtx", bytes);
        let i = &loaded.integrity;
        assert_eq!((i.events, i.recovered, i.lost), (complete, complete, 7 - complete), "cut at {cut}: {i:?}");
        assert!(has_warning(&loaded, "truncated"), "cut at {cut}: {:?}", loaded.warnings);
        let ids: Vec<u64> = contents(&loaded).iter().map(|e| e.0).collect();
        assert_eq!(ids.len() as u64, complete);
    }
    // Cut inside the chunk header: nothing to read, and nothing says how much was there.
    let loaded = load_evtx_bytes("t.evtx", sample(SEVEN_RECORDS)[..FILE_HEADER_SIZE + 300].to_vec());
    assert!(loaded.events.is_empty());
    assert_eq!(loaded.integrity.chunks_lost_uncounted, 1);
}

#[test]
fn a_chunk_stored_twice_gives_its_records_once() {
    // Appended after the last chunk (the crate reads past the announced chunk count).
    let original = sample(THREE_CHUNKS);
    let mut bytes = original[..chunk_range(3).start].to_vec();
    bytes.extend_from_slice(&original[chunk_range(1)]);
    let loaded = load_evtx_bytes("d.evtx", bytes);
    let i = &loaded.integrity;
    assert_eq!((i.events, i.duplicates, i.lost), (295, 106, 0), "{i:?}");
    assert!(has_warning(&loaded, "dropped 106 exact duplicate records"), "{:?}", loaded.warnings);

    // Written over the next chunk: its records are duplicates, and the overwritten ones lost.
    let mut bytes = original.clone();
    bytes.copy_within(chunk_range(1), chunk_range(2).start);
    let loaded = load_evtx_bytes("d.evtx", bytes);
    let i = &loaded.integrity;
    assert_eq!((i.events, i.duplicates, i.lost), (210, 106, 85), "{i:?}");
}

#[test]
fn every_corpus_file_loads_clean() {
    let root = sigmaforge_data::for_tests().join("evtx");
    let files = crate::corpus::collect_event_files(&root).unwrap();
    let mut events = 0;
    for file in files.iter().filter(|f| f.name.ends_with(".evtx")) {
        let loaded = load_evtx_bytes(&file.name, std::fs::read(&file.path).unwrap());
        let i = &loaded.integrity;
        events += i.events;
        // The one record of the corpus without an EventRecordID is named, not lost.
        let expected_unnamed = u64::from(file.name.contains("ID5140-5145-Bloodhound-SharpHound enumeration via SMB"));
        assert_eq!(i.without_record_id, expected_unnamed, "{}: {i:?}", file.name);
        let clean = FileIntegrity { without_record_id: expected_unnamed, ..i.clone() };
        assert!(clean.is_clean() || expected_unnamed == 1, "{}: {i:?} {:?}", file.name, loaded.warnings);
        assert_eq!((i.lost, i.recovered, i.duplicates), (0, 0, 0), "{}: {:?}", file.name, loaded.warnings);
    }
    assert_eq!(events, 25_062, "the corpus holds 25,062 records");
}

#[test]
fn a_routed_file_keeps_exactly_the_events_of_the_buckets_it_reads() {
    // A Security log with several EventIDs: read only the first record's (and all of System).
    let file = THREE_CHUNKS;
    let all = load_evtx_bytes("f.evtx", sample(file));
    let bucket = |e: &crate::event::Event| {
        let first = |name: &str| all.table.get(name).and_then(|k| e.values(k).next()).map(|v| v.text().to_string()).unwrap_or_default();
        (first("Channel").to_lowercase(), first("EventID").trim().to_string())
    };
    let (channel, event_id) = bucket(&all.events[0]);
    let mut route = Buckets::default();
    route.add(&channel, Some(&[event_id]));
    route.add("system", None);
    let routed = load_evtx_bytes_routed("f.evtx", &sample(file), Some(&route));
    let wanted: Vec<_> =
        contents(&all).into_iter().zip(&all.events).filter(|(_, e)| route.accepts(&bucket(e).0, &bucket(e).1)).map(|(c, _)| c).collect();
    assert!(!wanted.is_empty() && wanted.len() < all.events.len(), "{} of {}", wanted.len(), all.events.len());
    assert_eq!(contents(&routed), wanted);
    assert_eq!(routed.skipped as usize, all.events.len() - wanted.len());
    // Skipped records were read: nothing counts as lost, and the report is the same.
    assert_eq!(routed.integrity, FileIntegrity { events: wanted.len() as u64, ..all.integrity.clone() });
    assert!(routed.warnings.is_empty(), "{:?}", routed.warnings);
}

/// Records whose bytes are corrupted but whose chunk checksums were recomputed (so the chunk
/// counts as intact and the template path reads it, as it would a crafted file): loading never
/// panics (the loader would catch it and say the parser failed) and ends.
#[test]
fn records_corrupted_under_valid_checksums_never_panic() {
    for file in [SYSMON_FILE, TWENTY_EIGHT_RECORDS] {
        let original = sample(file);
        let chunk = chunk_range(0);
        let free = u32::from_le_bytes(original[chunk.start + 48..chunk.start + 52].try_into().unwrap()) as usize;
        let mut next = crate::test_support::xorshift(0x2545_f491_4f6c_dd1d);
        for round in 0..400 {
            let mut bytes = original.clone();
            // One to four bytes anywhere among the records, set to random or boundary values.
            for _ in 0..1 + next() % 4 {
                let at = chunk.start + 512 + (next() as usize) % (free - 512);
                bytes[at] = [0x00, 0xFF, 0x01, 0x0C, 0x21, 0x81, next() as u8][(next() % 7) as usize];
            }
            let records_crc = evtx::checksum_ieee(&bytes[chunk.start + 512..chunk.start + free]);
            bytes[chunk.start + 52..chunk.start + 56].copy_from_slice(&records_crc.to_le_bytes());
            let mut covered = bytes[chunk.start..chunk.start + 120].to_vec();
            covered.extend_from_slice(&bytes[chunk.start + 128..chunk.start + 512]);
            bytes[chunk.start + 124..chunk.start + 128].copy_from_slice(&evtx::checksum_ieee(&covered).to_le_bytes());
            let loaded = load_evtx_bytes("c.evtx", bytes);
            assert!(!loaded.warnings.iter().any(|w| w.message.contains("parser failed")), "{file} round {round}: {:?}", loaded.warnings);
        }
    }
}
