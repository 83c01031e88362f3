//! sigma-task over the real data directory (EVTX corpus + SigmaHQ rules), natively: the same
//! cases the e2e tests check through the Wasm plugin, plus checks only the library can see.

use std::sync::OnceLock;
use std::time::Instant;

use sigma_task::fixtures::{reference_answer, rollouts};
use sigma_task::{SigmaTask, TaskConfig, TaskRef};

fn task() -> &'static SigmaTask {
    static TASK: OnceLock<SigmaTask> = OnceLock::new();
    TASK.get_or_init(|| {
        let data = sigmaforge_data::for_tests();
        let t = Instant::now();
        let task = SigmaTask::load(&data, TaskConfig::default(), &|level, msg| eprintln!("[{level:?}] {msg}")).expect("load");
        eprintln!("init: {:?}", t.elapsed());
        task
    })
}

fn rule_text(path: &str) -> String {
    std::fs::read_to_string(sigmaforge_data::for_tests().join("sigma").join(path)).unwrap()
}

fn total(scores: &[sigma_task::ComponentScore]) -> f64 {
    scores.iter().map(|c| c.value * c.weight).sum()
}

#[test]
fn every_train_reference_scores_its_own_answer_perfectly() {
    let t = task();
    let refs = t.references("train").unwrap();
    assert!(refs.len() >= 34, "only {} train rules fire", refs.len());
    for r in refs {
        let answer = reference_answer(&rule_text(&r.path));
        let s = t.score(TaskRef::Id(&format!("{}#0", r.key)), &answer).unwrap();
        assert!((total(&s) - 1.1).abs() < 1e-9, "{}: {s:#?}", r.path);
    }
}

#[test]
fn fixture_rollouts_score_as_expected_and_deterministically() {
    let t = task();
    for r in t.references("train").unwrap().iter().take(8) {
        let id = format!("{}#1", r.key);
        for rollout in rollouts(&rule_text(&r.path)) {
            let s = t.score(TaskRef::Id(&id), &rollout.completion).unwrap();
            if let Some(expected) = rollout.expected_total {
                assert!((total(&s) - expected).abs() < 1e-9, "{} / {}: {s:#?}", r.path, rollout.kind);
            }
            for c in &s {
                assert!((0.0..=1.0).contains(&c.value) && !c.detail.is_empty(), "{c:?}");
            }
            assert_eq!(s, t.score(TaskRef::Id(&id), &rollout.completion).unwrap(), "scores must be deterministic");
        }
    }
}

#[test]
fn inline_reference_and_errors() {
    let t = task();
    let r = &t.references("train").unwrap()[0];
    let text = rule_text(&r.path);
    let s = t.score(TaskRef::Reference(&text), &reference_answer(&text)).unwrap();
    assert!((total(&s) - 1.1).abs() < 1e-9);

    let e = t.score(TaskRef::Reference("title: x\nlogsource: {product: windows}\n"), "x").unwrap_err().to_string();
    assert!(e.contains("detection"), "{e}");
    let silent = "title: x\nlogsource: {product: windows, category: process_creation}\ndetection: {s: {Image: 'no-such-image-zz'}, condition: s}\n";
    assert!(t.score(TaskRef::Reference(silent), "x").unwrap_err().to_string().contains("matches no event"));
    assert!(t.score(TaskRef::Id("nope#0"), "x").unwrap_err().to_string().contains("nope"));
    assert!(t.score(TaskRef::Id(&format!("{}#99", r.key)), "x").unwrap_err().to_string().contains("requests_per_rule"));
}

#[test]
fn test_split_is_disjoint_and_fires() {
    let t = task();
    let train = t.references("train").unwrap();
    let test = t.references("test").unwrap();
    assert!(test.len() >= 50, "test split has {} rules", test.len());
    for r in test {
        assert!(!r.reference.events.is_empty());
        assert!(train.iter().all(|tr| tr.key != r.key && tr.path != r.path), "{} is in train", r.path);
    }
    let tasks = t.list_tasks("train").unwrap();
    assert_eq!(tasks.len(), train.len() * t.config().requests_per_rule);
}

#[test]
fn corpus_cache_round_trip_gives_the_same_rewards() {
    let data = sigmaforge_data::for_tests();
    let dir = std::env::temp_dir().join(format!("sf-task-cache-{}", std::process::id()));
    let config = TaskConfig { corpus_cache: dir.join("corpus.sfc").display().to_string(), ..TaskConfig::default() };
    let (path, events) = sigma_task::corpus_cache::write(&data, &config).unwrap();
    assert!(path.is_file());
    let logs = std::sync::Mutex::new(Vec::new());
    let t0 = Instant::now();
    let cached = SigmaTask::load(&data, config, &|_, m| logs.lock().unwrap().push(m.to_string())).unwrap();
    eprintln!("init from cache: {:?}", t0.elapsed());
    assert!(logs.lock().unwrap().iter().any(|m| m.contains("(cache ")), "{:?}", logs.lock().unwrap());
    assert_eq!(cached.corpus().len(), events);
    let fresh = task();
    for r in fresh.references("train").unwrap().iter().take(10) {
        for rollout in rollouts(&rule_text(&r.path)) {
            let id = format!("{}#0", r.key);
            let score = |t: &SigmaTask| t.score(TaskRef::Id(&id), &rollout.completion).map_err(|e| e.to_string());
            assert_eq!(score(&cached), score(fresh));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn event_id_narrowing_never_changes_a_match_set() {
    use sigma_engine::hunt::Hunter;
    let data = sigmaforge_data::for_tests();
    let corpus = sigma_task::corpus_cache::load(&data, &TaskConfig::default(), &|_, _| {}).unwrap();
    let map = sigma_engine::logsource::LogsourceMap::builtin().unwrap();
    let plain = Hunter::new(&corpus, &map, sigma_engine::CompileOptions::for_events()).without_event_id_narrowing();
    let t = task();
    let mut pinned = 0;
    for split in ["train", "test"] {
        for r in t.references(split).unwrap() {
            let rule = sigma_task::tasks::parse_rule(&rule_text(&r.path), &r.path).unwrap();
            pinned += t.hunter().prepare(&rule).unwrap().is_narrowed() as usize;
            assert_eq!(plain.match_rule(&rule).unwrap(), r.reference.events.as_slice(), "{}", r.path);
        }
    }
    assert!(pinned > 20, "only {pinned} rules pin their EventIDs");
}

#[test]
fn every_train_task_has_a_reference_answer_that_scores_full_marks() {
    let t = task();
    let tasks = t.list_tasks("train").unwrap();
    assert!(tasks.len() >= 34);
    for task in &tasks {
        let answer = t.reference_answer(&task.id).unwrap().unwrap_or_else(|| panic!("{}: no reference answer", task.id));
        assert!(answer.starts_with("```yaml\n") && answer.ends_with("\n```"), "{}: {answer}", task.id);
        assert!(answer.contains("logsource:") && answer.contains("detection:") && !answer.contains("title:"), "{}: {answer}", task.id);
        let s = t.score(TaskRef::Id(&task.id), &answer).unwrap();
        assert!((total(&s) - 1.1).abs() < 1e-9, "{}: {s:#?}", task.id);
        let iou = s.iter().find(|c| c.name == "iou").unwrap();
        assert_eq!(iou.value, 1.0, "{}: {}", task.id, iou.detail);
    }
    // The bare rule id names the same rule.
    let r = &t.references("train").unwrap()[0];
    assert_eq!(t.reference_answer(&r.key).unwrap(), t.reference_answer(&format!("{}#1", r.key)).unwrap());
}

#[test]
fn test_tasks_and_unknown_ids_get_no_reference_answer() {
    let t = task();
    let tasks = t.list_tasks("test").unwrap();
    assert!(!tasks.is_empty());
    for task in &tasks {
        let e = t.reference_answer(&task.id).unwrap_err().to_string();
        assert!(e.contains("test split") && e.contains("never returned") && e.contains(&task.id), "{e}");
    }
    assert!(t.reference_answer("nope#0").unwrap_err().to_string().contains("unknown task id `nope#0`"));
    let r = &t.references("train").unwrap()[0];
    assert!(t.reference_answer(&format!("{}#99", r.key)).unwrap_err().to_string().contains("requests_per_rule"));
}
