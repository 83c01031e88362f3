//! Whole GRPO steps with tool turns, driven by a scripted policy: the tools are offered in the
//! prompt, calls run, the final answer is what the reward scores, the update trains on the
//! masked completions, and the step's tool metrics and rollouts.jsonl record it all.

mod common;

use std::sync::Arc;

use candle_core::{DType, Device};
use common::*;
use sigmaforge_model::load::ChatMessage;
use sigmaforge_model::model::{CausalLm, ModelConfig};
use sigmaforge_model::testing::{CHATML_BYTE_VOCAB, FAKE_SEARCH_HIT, FakeToolBox, ScriptedPolicy, chatml_byte_tokenizer};
use sigmaforge_reward::{ComponentScore, ScoreResult, Scorer, TaskEnvironment, TaskPrompt, TaskRef};
use sigmaforge_trainer::train::Trainer;

/// Reward 1 when the scored text names EventID 4688, else 0; records what it was asked to score.
#[derive(Default)]
struct NeedsTheEventId {
    scored: std::sync::Mutex<Vec<String>>,
}

impl TaskEnvironment for NeedsTheEventId {
    fn tasks(&self) -> anyhow::Result<Vec<TaskPrompt>> {
        Ok((0..2)
            .map(|i| TaskPrompt { id: format!("t{i}"), messages: vec![ChatMessage::new("user", format!("Rule {i} for process creation."))] })
            .collect())
    }
}

impl Scorer for NeedsTheEventId {
    fn name(&self) -> String {
        "needs-the-event-id".into()
    }
    fn components(&self) -> Vec<(String, f64)> {
        vec![("event_id".into(), 1.0)]
    }
    fn score_batch(&self, items: &[(TaskRef, String)]) -> Vec<ScoreResult> {
        self.scored.lock().unwrap().extend(items.iter().map(|(_, c)| c.clone()));
        items
            .iter()
            .map(|(_, c)| {
                let v = if c.contains("EventID: 4688") { 1.0 } else { 0.0 };
                let detail = if v == 1.0 { "names EventID 4688" } else { "no EventID 4688" };
                ScoreResult {
                    total: v,
                    components: vec![ComponentScore { name: "event_id".into(), value: v, weight: 1.0, detail: detail.into() }],
                    error: None,
                }
            })
            .collect()
    }
}

/// Per group of 4: copy 0 searches and then answers from the result (reward 1), copy 1 sends a
/// call with broken JSON and answers blind (0), copies 2 and 3 answer without a tool (0).
fn script(ctx: &str, copy: usize) -> String {
    if ctx.contains("<tool_response>") {
        return if ctx.contains(FAKE_SEARCH_HIT) {
            "detection:\n  sel:\n    EventID: 4688".into()
        } else {
            "detection:\n  sel:\n    EventID: 1".into()
        };
    }
    match copy {
        0 => "<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"process creation\"}}\n</tool_call>".into(),
        1 => "<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": </tool_call>".into(),
        _ => "detection:\n  sel:\n    EventID: 1".into(),
    }
}

#[test]
fn a_training_step_with_tool_calls() {
    let cfg = tiny_config(
        "training: { steps: 2, prompts_per_step: 2, rollouts_per_prompt: 4, micro_batch_size: 4, passes_per_batch: 1 }\n\
         generation: { prompts_per_call: 1 }\ngrpo: { beta: 0.0 }\ntools: { max_turns: 1, format: auto }",
    );
    let dir = temp_run_dir("tools-step");
    let mc = ModelConfig { vocab_size: CHATML_BYTE_VOCAB, max_position_embeddings: 2048, ..ModelConfig::tiny_qwen3() };
    let model = CausalLm::random(&mc, None, 11, DType::F32, &Device::Cpu).unwrap();
    let tok = chatml_byte_tokenizer().unwrap();
    let env = Arc::new(NeedsTheEventId::default());
    let toolbox = Arc::new(FakeToolBox::default());
    let policy = ScriptedPolicy::new(tok.clone(), script);
    let log = policy.log.clone();
    let mut trainer =
        Trainer::new(cfg, model, tok, env.clone(), &dir).unwrap().with_tools(toolbox.clone()).unwrap().with_segment_generator(Box::new(policy));
    let before = weights(&trainer);
    let out = trainer.train_step().unwrap();
    let m = &out.metrics;

    // The prompt offered the tools in the system turn.
    let first_context = log.lock().unwrap()[0].contexts[0].clone();
    assert!(first_context.starts_with("<|im_start|>system\n# Tools\n"), "{first_context}");
    assert!(first_context.contains("\"name\": \"search\""));
    // Only the search call ran; the broken one was answered with an error.
    assert_eq!(toolbox.invocations.lock().unwrap().len(), 2, "one search per group");
    assert_eq!((m.tool_call_fraction, m.tool_calls, m.tool_errors), (0.5, 4, 2));
    assert_eq!((m.reward_with_tool, m.reward_without_tool), (Some(0.5), Some(0.0)));
    assert_eq!(m.reward.mean, 0.25);
    // The reward scored final answers, not calls or tool results.
    let scored = env.scored.lock().unwrap().clone();
    assert_eq!(scored.len(), 8);
    assert!(scored.iter().all(|s| s.starts_with("detection:")), "{scored:?}");
    // The update trained on them.
    assert!(m.loss.is_finite() && m.grad_norm > 0.0, "{m:?}");
    assert_ne!(before, weights(&trainer));

    // rollouts.jsonl keeps the transcript with the tool result.
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.join("rollouts.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 8);
    let called = &lines[0];
    assert_eq!(called["tool_calls"][0]["name"], "search");
    assert!(called["tool_calls"][0]["result"].as_str().unwrap().contains(FAKE_SEARCH_HIT));
    assert!(called["transcript"].as_str().unwrap().contains(&format!("<tool_response>\nquery: process creation\n{FAKE_SEARCH_HIT}")));
    assert_eq!(called["final_answer"], "detection:\n  sel:\n    EventID: 4688");
    assert_eq!(called["reward"], 1.0);
    // ... and each component as the reward gave it, with its weight and why it scored so.
    assert_eq!(called["components"], serde_json::json!([{ "name": "event_id", "value": 1.0, "weight": 1.0, "detail": "names EventID 4688" }]));
    assert_eq!(lines[2]["components"][0]["detail"], "no EventID 4688");
    assert!(lines[1]["tool_calls"][0]["result"].as_str().unwrap().starts_with("Error: the tool call is not valid JSON"));
    assert!(lines[2].get("tool_calls").is_none() && lines[2].get("transcript").is_none());

    // `run` (the second step) draws the tool panel and keeps the tool metrics in metrics.jsonl.
    trainer.run(false, None).unwrap();
    let all = sigmaforge_trainer::metrics::read_all(&dir).unwrap();
    assert_eq!(all.iter().map(|m| m.step).collect::<Vec<_>>(), vec![2]);
    assert!(all.iter().all(|m| m.tool_calls == 4));
    assert!(dir.join("metrics.png").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}
