//! Reference answers through the plugin contract (`references`, sigmaforge:plugin@0.1.1), with
//! the real plugins loaded by the runtime: sigma.wasm teaches its train tasks and refuses its
//! test tasks, toy-task.wasm teaches, regex-task.wasm teaches; a plugin built against the frozen
//! 0.1.0 WIT still loads, lists and scores, and says clearly why it has no reference answers.

use std::path::Path;

use sigmaforge_runtime::{HOST_WIT_VERSION, LoadedPlugin, PluginConfig, Runtime, RuntimeOptions, TaskPlugin, TaskRef};

fn runtime() -> Runtime {
    let cache = sigmaforge_e2e::target_dir().join("e2e-cwasm-cache");
    Runtime::new(RuntimeOptions { cache_dir: Some(cache), ..RuntimeOptions::default() }).unwrap()
}

fn load(name: &str, wasm: &Path, data: Option<&Path>) -> TaskPlugin {
    let mut cfg = PluginConfig::from_path(wasm);
    cfg.name = name.to_string();
    cfg.limits.instances = 1;
    if let Some(d) = data {
        cfg = cfg.with_data(d);
    }
    match runtime().load(&cfg).unwrap_or_else(|e| panic!("loading {}: {e:#}", wasm.display())) {
        LoadedPlugin::Task(t) => t,
        LoadedPlugin::Tool(_) => panic!("{} is a tool plugin", wasm.display()),
    }
}

#[test]
fn the_host_implements_0_1_1() {
    assert_eq!(HOST_WIT_VERSION.to_string(), "0.1.1");
}

#[test]
fn sigma_returns_train_references_that_score_full_marks_and_refuses_test_tasks() {
    let data = sigmaforge_data::for_tests();
    let sigma = load("sigma", &sigmaforge_e2e::wasm_plugin("sigma-plugin"), Some(&data));
    assert!(sigma.has_references());
    assert_eq!(sigma.wit_version(), "0.1.1");

    let train = sigma.list_tasks("train").unwrap();
    for task in train.iter().take(6) {
        let answer = sigma.reference_answer(&task.id).unwrap().unwrap_or_else(|| panic!("{}: no reference answer", task.id));
        assert!(answer.starts_with("```yaml\nlogsource:") || answer.starts_with("```yaml\ndetection:"), "{answer}");
        assert!(answer.ends_with("\n```") && !answer.contains("\ntitle:"), "{answer}");
        let score = sigma.score(&TaskRef::Id(task.id.clone()), &answer);
        assert!(score.error.is_none(), "{score:?}");
        assert!((score.total - 1.1).abs() < 1e-9, "{}: {score:?}", task.id);
    }

    let test = sigma.list_tasks("test").unwrap();
    let err = format!("{:#}", sigma.reference_answer(&test[0].id).unwrap_err());
    assert!(err.contains("plugin `sigma` refused") && err.contains("test split") && err.contains(&test[0].id), "{err}");
    let err = format!("{:#}", sigma.reference_answer("no-such-rule#0").unwrap_err());
    assert!(err.contains("unknown task id `no-such-rule#0`"), "{err}");
    // A refusal is the plugin's answer, not a failure: the instance keeps serving.
    assert!(sigma.reference_answer(&train[0].id).unwrap().is_some());
}

#[test]
fn toy_task_teaches_every_task() {
    let toy = load("toy", &sigmaforge_e2e::wasm_plugin("toy-task-plugin"), None);
    assert!(toy.has_references());
    for task in toy.list_tasks("train").unwrap() {
        let answer = toy.reference_answer(&task.id).unwrap().expect("every toy task has a reference");
        let score = toy.score(&TaskRef::Id(task.id.clone()), &answer);
        assert_eq!(score.total, 1.0, "{}: {answer} {score:?}", task.id);
    }
    let err = format!("{:#}", toy.reference_answer("task-99").unwrap_err());
    assert!(err.contains("unknown task `task-99`"), "{err}");
}

#[test]
fn regex_task_teaches_train_tasks_only() {
    let regex = load("regex", &sigmaforge_e2e::wasm_plugin("regex-task"), None);
    assert!(regex.has_references());
    for task in regex.list_tasks("train").unwrap() {
        let answer = regex.reference_answer(&task.id).unwrap().unwrap();
        assert!(answer.starts_with("```regex\n"), "{answer}");
        assert_eq!(regex.score(&TaskRef::Id(task.id.clone()), &answer).total, 1.0, "{}: {answer}", task.id);
    }
    let test = regex.list_tasks("test").unwrap();
    let err = format!("{:#}", regex.reference_answer(&test[0].id).unwrap_err());
    assert!(err.contains("test split"), "{err}");
}

#[test]
fn a_0_1_0_plugin_still_loads_lists_and_scores_but_has_no_references() {
    let wasm = sigmaforge_e2e::wasm_plugin("toy-task-v010");
    let old = load("toy-v010", &wasm, None);
    assert_eq!(old.wit_version(), "0.1.0");
    assert!(!old.has_references());
    assert_eq!(old.splits(), ["train", "test"]);
    let train = old.list_tasks("train").unwrap();
    assert_eq!(train.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["v010-0", "v010-1", "v010-2"]);
    let score = old.score(&TaskRef::Id("v010-1".into()), "target target target");
    assert!(score.error.is_none(), "{score:?}");
    assert_eq!(score.total, 0.5);
    let batch: Vec<(TaskRef, String)> = (0..4).map(|i| (TaskRef::Id("v010-0".into()), "target ".repeat(i))).collect();
    let totals: Vec<f64> = old.score_batch(&batch).iter().map(|s| s.total).collect();
    assert_eq!(totals, [0.0, 1.0 / 6.0, 2.0 / 6.0, 0.5]);

    let err = format!("{:#}", old.reference_answer("v010-0").unwrap_err());
    assert!(err.contains("plugin `toy-v010`") && err.contains("sigmaforge:plugin@0.1.0") && err.contains("0.1.1"), "{err}");
    assert!(err.contains("references") && err.contains("sft"), "{err}");

    let inspection = runtime().inspect(&wasm, None).unwrap();
    assert_eq!((inspection.wit_version.as_str(), inspection.host_wit_version.as_str(), inspection.references), ("0.1.0", "0.1.1", false));
    assert!(inspection.load_error.is_none(), "{:?}", inspection.load_error);
}

#[test]
fn inspect_shows_references_in_json_and_text() {
    for (package, expected) in [("toy-task-plugin", true), ("toy-task-v010", false)] {
        let wasm = sigmaforge_e2e::wasm_plugin(package);
        let (code, out, err) = sigmaforge_e2e::run_sigmaforge(&["plugin", "inspect", wasm.to_str().unwrap(), "--json"], None);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["references"], expected, "{package}: {v}");
        assert_eq!(v["host_wit_version"], "0.1.1");
        // The text view says it too.
        let (code, out, err) = sigmaforge_e2e::run_sigmaforge(&["plugin", "inspect", wasm.to_str().unwrap()], None);
        assert_eq!(code, 0, "{err}");
        let line = out.lines().find(|l| l.starts_with("references:")).unwrap_or_else(|| panic!("{package}: no references line in {out}"));
        assert_eq!(line.contains("yes"), expected, "{package}: {line}");
    }
}
