//! The template path against the JSON path, and its renderings against the crate's.

use super::render::{write_binary, write_filetime, write_guid, write_hex};
use crate::corpus::Buckets;
use crate::event::FieldTable;
use crate::evtx::{is_intact, load_evtx_bytes, load_evtx_bytes_routed};
use crate::json_events::flatten_event;
use crate::json_events::stream::{Streamed, flatten_record};
use crate::loaded_file::LoadedFile;

/// A file's events as (record id, timestamp, [(name, kind, text)] in field order).
type Seen = Vec<(u64, Option<i64>, Vec<(String, String, String)>)>;

fn seen(loaded: &LoadedFile) -> Seen {
    let table: &FieldTable = &loaded.table;
    let event = |e: &crate::event::Event| {
        let fields = e.fields().iter().map(|(k, v)| (table.name(*k).to_string(), format!("{:?}", v.kind()), v.text().to_string())).collect();
        (e.record_id, e.timestamp_us, fields)
    };
    loaded.events.iter().map(event).collect()
}

/// The events of an intact file the way they were read before templates: every record
/// rendered to JSON by the crate and flattened from that.
fn through_json(name: &str, bytes: &[u8], route: Option<&Buckets>) -> LoadedFile {
    let mut loaded = LoadedFile::new(name);
    let settings = evtx::ParserSettings::new().indent(false).separate_json_attributes(false).num_threads(0);
    let mut parser = evtx::EvtxParser::from_read_seek(std::io::Cursor::new(bytes)).unwrap().with_configuration(settings);
    for record in parser.records_json_bytes().flatten() {
        let flat = match flatten_record(&record.data, &mut loaded.table, route) {
            Streamed::Event(flat) => Some(flat),
            Streamed::GiveUp => serde_json::from_slice(&record.data).ok().and_then(|json| flatten_event(&json, &mut loaded.table).ok()),
            Streamed::Skipped => {
                loaded.skipped += 1;
                None
            }
        };
        if let Some(flat) = flat {
            loaded.push(flat);
        }
    }
    loaded.finish();
    loaded
}

/// GUIDs, hex numbers, binary and FILETIMEs are written as the crate renders them.
#[test]
fn renderings_match_the_crates() {
    use evtx::binxml::value_variant::{BinXmlValue, FileTime};
    let mut next = crate::test_support::xorshift(0x9e37_79b9_7f4a_7c15);
    let check = |value: BinXmlValue, write: &dyn Fn(&mut String)| {
        let mut ours = String::new();
        write(&mut ours);
        assert_eq!(ours, value.to_string(), "{value:?}");
    };
    let mut times = vec![0, 1, 116_444_736_000_000_000, 2_650_467_743_999_999_999, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX];
    times.extend((0..2000).map(|_| next() % (i64::MAX as u64)));
    times.extend((0..2000).map(|_| 130_000_000_000_000_000 + next() % 10_000_000_000_000_000));
    for t in times {
        check(BinXmlValue::FileTimeType(FileTime(t)), &|s| write_filetime(s, t));
    }
    for n in [0, 1, 15, 16, 255, u64::from(u32::MAX), u64::MAX].into_iter().chain((0..500).map(|_| next() >> (next() % 64))) {
        check(BinXmlValue::HexInt64Type(n), &|s| write_hex(s, n));
        check(BinXmlValue::HexInt32Type(n as u32), &|s| write_hex(s, u64::from(n as u32)));
    }
    for _ in 0..200 {
        let guid: [u8; 16] = std::array::from_fn(|_| next() as u8);
        check(BinXmlValue::GuidType(guid), &|s| write_guid(s, &guid));
        let bytes: Vec<u8> = (0..next() % 300).map(|_| next() as u8).collect();
        check(BinXmlValue::BinaryType(&bytes), &|s| write_binary(s, &bytes));
    }
}

/// The template path's fields are the JSON path's, for every record of every intact corpus
/// file: names, kinds, text, order, and the order names enter the file's table.
#[test]
fn every_corpus_record_flattens_as_through_json() {
    let root = sigmaforge_data::for_tests().join("evtx");
    let files = crate::corpus::collect_event_files(&root).unwrap();
    let (mut events, mut from_templates, mut checked, mut skipped) = (0, 0, 0, 0);
    let mut route = Buckets::default();
    route.add("security", Some(&["4688".to_string(), "4624".to_string()]));
    route.add("microsoft-windows-sysmon/operational", Some(&["1".to_string()]));
    route.add("system", None);
    for file in files.iter().filter(|f| f.path.extension().is_some_and(|e| e == "evtx")) {
        let bytes = std::fs::read(&file.path).unwrap();
        if !is_intact(&bytes) {
            continue;
        }
        checked += 1;
        let loaded = load_evtx_bytes(&file.name, bytes.clone());
        let reference = through_json(&file.name, &bytes, None);
        // Routed, as a hunt reads: the same records left out, the same names put back.
        let (routed, routed_reference) = (load_evtx_bytes_routed(&file.name, &bytes, Some(&route)), through_json(&file.name, &bytes, Some(&route)));
        assert_eq!(seen(&routed), seen(&routed_reference), "{}: routed", file.name);
        assert_eq!(
            (routed.skipped, routed.table.names().collect::<Vec<_>>()),
            (routed_reference.skipped, routed_reference.table.names().collect()),
            "{}: routed",
            file.name
        );
        skipped += routed.skipped;
        let (fast, json) = (seen(&loaded), seen(&reference));
        assert_eq!(fast.len(), json.len(), "{}: event count", file.name);
        for (a, b) in fast.iter().zip(&json) {
            if a != b {
                let at = a.2.iter().zip(&b.2).position(|(x, y)| x != y).unwrap_or(a.2.len().min(b.2.len()));
                panic!(
                    "{} record {}: fields differ from #{at}: templates {:?}, JSON {:?}",
                    file.name,
                    b.0,
                    &a.2[at.min(a.2.len())..],
                    &b.2[at.min(b.2.len())..]
                );
            }
        }
        assert_eq!(loaded.table.names().collect::<Vec<_>>(), reference.table.names().collect::<Vec<_>>(), "{}: names in table order", file.name);
        events += loaded.events.len();
        from_templates += loaded.from_templates as usize;
    }
    eprintln!("{checked} intact files, {events} events, {from_templates} straight from templates; routed: {skipped} left out");
    assert!(skipped > 15_000 && (skipped as usize) < events, "{skipped} left out by the route");
    assert!(checked > 550 && events > 25_000, "{checked} files, {events} events");
    // All but a few dozen records (44 when this was written: repeated `Data` names, text
    // beside elements, ...) are of shapes the plans cover; those go through JSON.
    assert!(from_templates * 1000 > events * 995, "only {from_templates} of {events} events straight from templates");
}
