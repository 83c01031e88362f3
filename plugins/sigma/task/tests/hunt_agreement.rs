//! The reward counts exactly the events `sigmaforge hunt` reports: for every SigmaHQ Windows rule,
//! over the real corpus, the reference set the reward builds from the rule and the candidate set
//! it builds from a completion holding the rule's own logsource and detection are the events a
//! hunt with that rule file reports. Plus the two cases where a second matcher once disagreed.
//!
//! The hunt side goes the way `sigmaforge hunt --rules R` goes (rule file → engine check →
//! [`RuleSet::from_checked`] → [`Hunter::hunt`]), with its own hunter over the same corpus.

use std::sync::OnceLock;
use std::time::Instant;

use sigma_engine::CompileOptions;
use sigma_engine::check::check_file;
use sigma_engine::hunt::{Hunter, RuleSet};
use sigma_engine::logsource::LogsourceMap;
use sigma_task::fixtures::reference_answer;
use sigma_task::{SigmaTask, TaskConfig, TaskRef};

fn task() -> &'static SigmaTask {
    static TASK: OnceLock<SigmaTask> = OnceLock::new();
    TASK.get_or_init(|| SigmaTask::load(&sigmaforge_data::for_tests(), TaskConfig::default(), &|_, _| {}).expect("load the sigma task"))
}

/// What `hunt --rules <file>` reports for the file's first detection rule, or `None` when the
/// file holds no rule that loads.
fn hunt_file(hunter: &Hunter<'_>, path: &std::path::Path) -> Option<Vec<u32>> {
    let set = RuleSet::from_checked(vec![check_file(path, &CompileOptions::default())]);
    let outcome = hunter.hunt(&set);
    outcome.rule_matches.into_iter().next()
}

/// (reference events, candidate events, events matched by both) from the IoU detail.
fn iou_counts(detail: &str) -> (usize, usize, usize) {
    let num = |after: &str| -> usize {
        let rest = &detail[detail.find(after).unwrap_or_else(|| panic!("no '{after}' in {detail:?}")) + after.len()..];
        rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    let both = num("matched ");
    let reference = num(&format!("matched {both} of "));
    let candidate = num("false positives (");
    (reference, candidate, both)
}

#[test]
fn reward_and_hunt_agree_on_every_sigmahq_windows_rule() {
    let t = task();
    let map = LogsourceMap::builtin().unwrap();
    let hunter = Hunter::new(t.corpus(), &map, CompileOptions::for_events());
    let root = sigmaforge_data::for_tests().join("sigma");
    let files: Vec<_> =
        ["rules", "rules-emerging-threats", "rules-threat-hunting"].iter().flat_map(|d| sigma_engine::rule_files(&root.join(d)).unwrap()).collect();
    assert_eq!(files.len(), 2858, "the SigmaHQ snapshot holds 2,858 Windows rules");
    let started = Instant::now();
    let (mut firing, mut silent, mut disagreements) = (0, 0, Vec::new());
    for path in &files {
        let rel = path.strip_prefix(&root).unwrap().display().to_string();
        let hunted = hunt_file(&hunter, path);
        let text = std::fs::read_to_string(path).unwrap();
        let expected = hunted.clone().unwrap_or_default();
        // As a reference: the reward's reference set is hunt's set (a silent rule is no task).
        match sigma_task::tasks::reference_from_text(&text, &rel, t.hunter()) {
            Ok(r) if r.reference.events.as_slice() != expected.as_slice() => {
                disagreements.push(format!("{rel}: reference set of {} events, hunt reports {}", r.reference.events.len(), expected.len()))
            }
            Ok(_) => firing += 1,
            Err(e) if expected.is_empty() => {
                let e = e.to_string();
                assert!(e.contains("matches no event") || e.contains("cannot be run") || hunted.is_none(), "{rel}: {e}");
                silent += 1;
                continue;
            }
            Err(e) => {
                disagreements.push(format!("{rel}: hunt reports {} events but the reward refuses the reference: {e}", expected.len()));
                continue;
            }
        }
        // As a candidate: the rule's own logsource and detection, scored against the rule.
        let scores = t.score(TaskRef::Reference(&text), &reference_answer(&text)).unwrap();
        let iou = scores.iter().find(|c| c.name == "iou").unwrap();
        let (reference, candidate, both) = iou_counts(&iou.detail);
        if (reference, candidate, both) != (expected.len(), expected.len(), expected.len()) || iou.value != 1.0 {
            disagreements.push(format!("{rel}: hunt reports {} events, the reward's IoU detail says: {}", expected.len(), iou.detail));
        }
    }
    eprintln!("{} rules: {firing} fire, {silent} match nothing; {:?}", files.len(), started.elapsed());
    assert!(disagreements.is_empty(), "{} rules disagree:\n{}", disagreements.len(), disagreements.join("\n"));
    assert!(firing > 200, "only {firing} SigmaHQ rules fire on the corpus");
}

/// Sysmon's `IntegrityLevel: High` is Security 4688's `MandatoryLabel: S-1-16-12288`: the reward
/// must count the 4688 events the mapping's value map adds, as `hunt` does.
#[test]
fn integrity_level_value_mapping_counts_in_the_reward() {
    let t = task();
    let rule = "title: High integrity processes\nlogsource:\n  product: windows\n  category: process_creation\ndetection:\n  selection:\n    IntegrityLevel: High\n  condition: selection\n";
    let reference = sigma_task::tasks::reference_from_text(rule, "integrity.yml", t.hunter()).unwrap();
    let corpus = t.corpus();
    let channel = corpus.field_key("Channel");
    let security = reference.reference.events.as_slice().iter().filter(|&&i| corpus.event(i).values(channel).any(|v| v.text() == "Security")).count();
    assert!(
        security > 0,
        "no Security 4688 event among the {} matched: the MandatoryLabel value map is not applied",
        reference.reference.events.len()
    );
    let scores = t.score(TaskRef::Reference(rule), &reference_answer(rule)).unwrap();
    let iou = scores.iter().find(|c| c.name == "iou").unwrap();
    let n = reference.reference.events.len();
    assert_eq!(iou_counts(&iou.detail), (n, n, n), "{}", iou.detail);
    let dir = std::env::temp_dir().join(format!("sf-integrity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("r.yml"), rule).unwrap();
    let map = LogsourceMap::builtin().unwrap();
    let hunted = hunt_file(&Hunter::new(corpus, &map, CompileOptions::for_events()), &dir.join("r.yml")).unwrap();
    assert_eq!(hunted, reference.reference.events.as_slice());
    std::fs::remove_dir_all(&dir).ok();
}

/// `all of *` leaves out search identifiers that start with `_` (Sigma's rule for `them` and for
/// patterns that do not start with `_`): EventID narrowing must not let `_other` pin the
/// EventIDs, or the rule would look at no event at all.
#[test]
fn all_of_star_with_an_underscore_selection_matches_what_hunt_matches() {
    let t = task();
    let rule = "title: Process creations\nlogsource:\n  product: windows\n  service: security\ndetection:\n  selection:\n    EventID: 4688\n  _unused:\n    EventID: 4624\n  condition: all of *\n";
    let reference = sigma_task::tasks::reference_from_text(rule, "underscore.yml", t.hunter()).unwrap();
    let plain = Hunter::new(t.corpus(), t.hunter().logsources(), CompileOptions::for_events()).without_event_id_narrowing();
    let parsed = sigma_task::tasks::parse_rule(rule, "underscore.yml").unwrap();
    assert_eq!(reference.reference.events.as_slice(), plain.match_rule(&parsed).unwrap());
    let scores = t.score(TaskRef::Reference(rule), &reference_answer(rule)).unwrap();
    let n = reference.reference.events.len();
    assert!(n > 0);
    assert_eq!(iou_counts(&scores.iter().find(|c| c.name == "iou").unwrap().detail), (n, n, n));
}

/// `sigmaforge hunt` with many rules runs them through one literal index (each rule then reads
/// only events holding one of its literals); over every SigmaHQ rule and the real corpus, each
/// rule's indexed matches are its matches without the index.
#[test]
fn one_indexed_hunt_over_every_sigmahq_rule_gives_each_rule_its_own_matches() {
    let t = task();
    let hunter = t.hunter();
    let root = sigmaforge_data::for_tests().join("sigma");
    let checked: Vec<_> = ["rules", "rules-emerging-threats", "rules-threat-hunting"]
        .iter()
        .flat_map(|d| sigma_engine::rule_files(&root.join(d)).unwrap())
        .map(|f| check_file(&f, &CompileOptions::default()))
        .collect();
    let set = RuleSet::from_checked(checked);
    let prepared: Vec<_> = set.rules.iter().map(|r| hunter.prepare(&r.rule).ok()).collect();
    let index = hunter.index(prepared.iter().map(Option::as_ref));
    let (filtered, units) = index.filtered_units();
    assert!(filtered * 10 >= units * 8, "only {filtered} of {units} compiled rule variants have a literal set");
    let passes = hunter.scan(&index, 0..t.corpus().len() as u32);
    let (mut firing, mut differ) = (0, Vec::new());
    for (i, p) in prepared.iter().enumerate() {
        let Some(p) = p else { continue };
        let plain = hunter.evaluate(p);
        firing += usize::from(!plain.is_empty());
        if hunter.evaluate_indexed(p, &index, &passes, i) != plain {
            differ.push(set.rules[i].file.clone());
        }
    }
    let passed: usize = (0..units).filter_map(|u| passes.of(u)).map(<[u32]>::len).sum();
    eprintln!(
        "{} rules, {filtered} of {units} variants indexed, {passed} (variant, event) pairs passed, automata {} KiB, {firing} fire",
        set.rules.len(),
        index.memory_usage() / 1024
    );
    assert!(firing > 200, "only {firing} rules fire");
    assert!(differ.is_empty(), "{} rules match differently with the index: {differ:?}", differ.len());
}
