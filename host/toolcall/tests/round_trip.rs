//! One tool turn end to end, natively: the search tool's own spec offered in each format, a
//! scripted model reply with a call (or a malformed one), the real search tool run on the
//! knowledge corpus, and the text the model continues from.

use std::sync::OnceLock;

use search_plugin::{SearchConfig, SearchTool};
use serde_json::Value;
use sigmaforge_toolcall::{ToolFormat, ToolResult, ToolSpec, parse_tool_calls, system_prompt_with_tools, tool_result_message, tool_turn_text};

fn search() -> &'static SearchTool {
    static TOOL: OnceLock<SearchTool> = OnceLock::new();
    TOOL.get_or_init(|| {
        let config = SearchConfig { corpus_dir: sigmaforge_data::for_tests().join("knowledge"), ..SearchConfig::default() };
        SearchTool::load(config).expect("corpus loads").0
    })
}

fn specs() -> Vec<ToolSpec> {
    let s = search().spec();
    vec![ToolSpec::from_wit(&s.name, &s.description, &s.parameters).expect("the search spec is valid")]
}

/// What an episode does with one model turn: parse, run each call, render the results.
fn run_turn(format: ToolFormat, reply: &str) -> (Vec<ToolResult>, String) {
    let tools = specs();
    let results: Vec<ToolResult> = parse_tool_calls(format, reply, &tools)
        .into_iter()
        .map(|attempt| match attempt.result {
            Ok(call) => ToolResult::from_invoke(&call, search().invoke(&call.arguments_json()).map_err(|e| e.to_string())),
            Err(err) => ToolResult::error(&err),
        })
        .collect();
    let text = tool_turn_text(format, &results);
    (results, text)
}

#[test]
fn hermes_call_returns_search_results_to_the_model() {
    let prompt = system_prompt_with_tools(ToolFormat::Hermes, Some("You write Sigma rules."), &specs());
    assert!(prompt.contains("\"name\": \"search\""), "{prompt}");
    let reply = "<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"new process created command line 4688\", \"k\": 2}}\n";
    let (results, text) = run_turn(ToolFormat::Hermes, reply);
    assert_eq!(results.len(), 1);
    assert!(!results[0].is_error, "{:?}", results[0]);
    let out: Value = serde_json::from_str(&results[0].content).unwrap();
    assert_eq!(out["results"][0]["id"], "win-security-4688");
    assert_eq!(out["results"].as_array().unwrap().len(), 2);
    assert!(text.starts_with("<|im_start|>user\n<tool_response>\n{\"query\""), "{text}");
    assert!(text.ends_with("</tool_response><|im_end|>\n<|im_start|>assistant\n"), "{text}");
}

#[test]
fn fenced_fallback_call_works_the_same() {
    let reply = "I need the technique.\n```tool_call\n{\"tool\": \"search\", \"arguments\": {\"query\": \"LSASS memory dump\"}}\n```";
    let (results, text) = run_turn(ToolFormat::Fenced, reply);
    let out: Value = serde_json::from_str(&results[0].content).unwrap();
    assert_eq!(out["results"][0]["id"], "attack-T1003.001");
    assert!(text.starts_with("<|im_start|>user\nTool result (search):\n{"), "{text}");
    assert_eq!(tool_result_message(ToolFormat::Fenced, &results[0]).role, "user");
}

#[test]
fn bad_calls_become_error_messages_and_good_ones_still_run() {
    let reply = "<tool_call>[{\"name\": \"search\", \"arguments\": {\"query\": \"\"}}, \
                 {\"name\": \"browse\", \"arguments\": {}}, \
                 {\"name\": \"search\", \"arguments\": {\"query\": \"sysmon event 1\", \"k\": 1}}]</tool_call>\
                 <tool_call>{\"name\": \"search\", \"arguments\": {\"query\": </tool_call>";
    let (results, text) = run_turn(ToolFormat::SmolLm2, reply);
    let contents: Vec<&str> = results.iter().map(|r| r.content.as_str()).collect();
    assert_eq!(results.len(), 4, "{contents:#?}");
    assert_eq!(contents[0], "Error: tool `search` returned an error: argument \"query\" is empty; say what to look up");
    assert_eq!(contents[1], "Error: unknown tool `browse`; available tools: search");
    assert!(!results[2].is_error && contents[2].contains("\"sysmon-1\""), "{}", contents[2]);
    assert!(contents[3].starts_with("Error: the tool call is not valid JSON"), "{}", contents[3]);
    assert_eq!(text.matches("<|im_start|>tool\n").count(), 4, "{text}");
}

#[test]
fn harmony_call_from_gpt_oss_returns_search_results_as_a_tool_message() {
    let developer = system_prompt_with_tools(ToolFormat::Harmony, Some("You write Sigma rules."), &specs());
    assert!(developer.contains("namespace functions {\n\n// "), "{developer}");
    assert!(developer.contains("type search = (_: {\n"), "{developer}");
    // Reasoning, then the call as gpt-oss writes it; the stop token <|call|> ends the segment.
    let reply = "<|channel|>analysis<|message|>Look up the process creation event.<|end|><|start|>assistant<|channel|>commentary \
                 to=functions.search <|constrain|>json<|message|>{\"query\": \"new process created command line 4688\", \"k\": 1}<|call|>";
    let (results, text) = run_turn(ToolFormat::Harmony, reply);
    assert_eq!(results.len(), 1);
    let out: Value = serde_json::from_str(&results[0].content).unwrap();
    assert_eq!(out["results"][0]["id"], "win-security-4688");
    assert!(text.starts_with("<|start|>functions.search to=assistant<|channel|>commentary<|message|>{\"query\""), "{text}");
    assert!(text.ends_with("<|end|><|start|>assistant"), "{text}");
    // The final channel is the answer; reasoning is not.
    let answer = sigmaforge_toolcall::harmony::final_answer(
        "<|channel|>analysis<|message|>4688 it is.<|end|><|start|>assistant<|channel|>final<|message|>detection: {}<|return|>",
    );
    assert_eq!(answer.unwrap(), "detection: {}");
}

#[test]
fn a_final_answer_runs_nothing() {
    let reply = "```yaml\nlogsource:\n  category: process_creation\n  product: windows\n```";
    for format in [ToolFormat::Hermes, ToolFormat::SmolLm2, ToolFormat::Fenced, ToolFormat::Harmony] {
        assert!(parse_tool_calls(format, reply, &specs()).is_empty(), "{format}");
    }
}
