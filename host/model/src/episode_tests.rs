use super::*;
use crate::testing::{FAKE_SEARCH_HIT, FakeToolBox, ScriptedPolicy, chatml_byte_tokenizer};

fn tools_cfg(max_turns: usize, format: &str) -> ToolsSection {
    ToolsSection { max_turns, format: format.into(), ..ToolsSection::default() }
}

fn tool_use(toolbox: Arc<FakeToolBox>, max_turns: usize, format: &str) -> ToolUse {
    ToolUse::new(toolbox, &tools_cfg(max_turns, format), Family::Qwen3, &chatml_byte_tokenizer().unwrap()).unwrap().expect("tools on")
}

fn prompt(tok: &Tokenizer, tools: &ToolUse, task: &str) -> Vec<u32> {
    let messages = tools.offer(&[ChatMessage::new("user", task)]);
    tok.encode(&tok.apply_chat_template(&messages, true, None).unwrap(), false).unwrap()
}

const CALL: &str = "Let me look that up.\n<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"process creation 4688\"}}\n</tool_call>";
const ANSWER: &str = "detection:\n  sel:\n    EventID: 4688\n  condition: sel";

/// First turn: the call; once a tool response is in the context: the answer.
fn call_then_answer(first: &'static str) -> impl FnMut(&str, usize) -> String + Send {
    move |context: &str, _copy: usize| if context.contains("<tool_response>") { ANSWER.to_string() } else { first.to_string() }
}

#[test]
fn a_tool_call_runs_and_its_result_is_context_but_not_an_action() {
    let tok = chatml_byte_tokenizer().unwrap();
    let toolbox = Arc::new(FakeToolBox::default());
    let tools = tool_use(toolbox.clone(), 1, "auto");
    assert_eq!(tools.format(), ToolFormat::Hermes);
    let p = prompt(&tok, &tools, "Write a rule for process creation.");
    assert!(tok.decode(&p, false).unwrap().contains("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"search\""));
    let mut policy = ScriptedPolicy::new(tok.clone(), call_then_answer(CALL));
    let log = policy.log.clone();
    let eps = run_episodes(&mut policy, &tok, std::slice::from_ref(&p), 2, Some(&tools)).unwrap();
    assert_eq!(eps.len(), 2);

    let e = &eps[0];
    assert_eq!(toolbox.invocations.lock().unwrap()[0], ("search".to_string(), "{\"query\":\"process creation 4688\"}".to_string()));
    assert_eq!(e.tool_calls.len(), 1);
    assert_eq!(e.tool_calls[0].name.as_deref(), Some("search"));
    assert!(!e.tool_calls[0].is_error);
    assert_eq!(e.tool_calls[0].arguments, Some(serde_json::json!({"query": "process creation 4688"})));
    // The transcript holds call, result and answer; the reward sees the answer only.
    let result_turn = format!(
        "<|im_end|>\n<|im_start|>user\n<tool_response>\nquery: process creation 4688\n{FAKE_SEARCH_HIT}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(e.transcript, format!("{CALL}{result_turn}{ANSWER}<|im_end|>"));
    assert_eq!(e.final_answer, ANSWER);
    assert_eq!(e.reward_text(RewardText::FinalAnswer), ANSWER);
    assert!(e.reward_text(RewardText::Transcript).contains(FAKE_SEARCH_HIT));
    assert_eq!(e.finish_reason, FinishReason::Stop);

    // Mask: the sampled tokens are exactly the two segments; the inserted ones the tool turn.
    let pick = |want: bool| -> Vec<u32> { e.completion_ids.iter().zip(&e.policy_mask).filter(|(_, m)| **m == want).map(|(t, _)| *t).collect() };
    assert_eq!(tok.decode(&pick(true), false).unwrap(), format!("{CALL}{ANSWER}<|im_end|>"));
    assert_eq!(tok.decode(&pick(false), false).unwrap(), result_turn);
    for (lp, m) in e.logprobs.iter().zip(&e.policy_mask) {
        assert_eq!(*lp, if *m { -1.0 } else { 0.0 });
    }
    assert_eq!(e.generated_tokens(), pick(true).len());

    // The continuation saw prompt + call + result and, after the last allowed turn, no stop strings.
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!((log[0].copies, log[0].stop_strings.clone()), (2, vec!["</tool_call>".to_string()]));
    assert_eq!(log[1].copies, 1);
    assert!(log[1].stop_strings.is_empty());
    assert_eq!(log[1].contexts[0], format!("{}{CALL}{result_turn}", tok.decode(&p, false).unwrap()));
}

#[test]
fn malformed_calls_answer_the_model_with_an_error_and_the_episode_goes_on() {
    let tok = chatml_byte_tokenizer().unwrap();
    let tools = tool_use(Arc::new(FakeToolBox::default()), 1, "hermes");
    let cases: [(&'static str, &str); 5] = [
        ("<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": }\n</tool_call>", "Error: the tool call is not valid JSON"),
        (
            "<tool_call>\n{\"name\": \"google\", \"arguments\": {\"q\": \"x\"}}\n</tool_call>",
            "Error: unknown tool `google`; available tools: search, fail, crash, panic",
        ),
        ("<tool_call>\n{\"name\": \"fail\", \"arguments\": {}}\n</tool_call>", "Error: tool `fail` returned an error: the index is empty"),
        ("<tool_call>\n{\"name\": \"crash\", \"arguments\": {}}\n</tool_call>", "Error: tool `crash` did not finish: wasm trap: unreachable"),
        (
            "<tool_call>\n{\"name\": \"panic\", \"arguments\": {}}\n</tool_call>",
            "Error: tool `panic` did not finish: the tool panicked: fake tool box bug",
        ),
    ];
    for (call, error) in cases {
        let p = prompt(&tok, &tools, "task");
        let mut policy = ScriptedPolicy::new(tok.clone(), call_then_answer(call));
        let e = run_episodes(&mut policy, &tok, &[p], 2, Some(&tools)).unwrap().remove(0);
        assert_eq!(e.tool_calls.len(), 1, "{call}");
        assert!(e.tool_calls[0].is_error && e.tool_calls[0].result.starts_with(error), "{call}: {:?}", e.tool_calls[0]);
        assert!(e.transcript.contains(&format!("<tool_response>\n{error}")), "{}", e.transcript);
        assert_eq!(e.final_answer, ANSWER, "{call}: the episode must continue to an answer");
        assert_eq!(e.tool_errors(), 1);
    }
}

#[test]
fn no_call_means_one_segment_and_calls_after_the_last_turn_are_not_run() {
    let tok = chatml_byte_tokenizer().unwrap();
    let toolbox = Arc::new(FakeToolBox::default());
    let tools = tool_use(toolbox.clone(), 1, "auto");
    let p = prompt(&tok, &tools, "task");
    // Copy 0 answers directly; copy 1 calls a tool, then calls again instead of answering.
    let mut policy = ScriptedPolicy::new(
        tok.clone(),
        |ctx: &str, copy: usize| {
            if copy == 0 && !ctx.contains("<tool_response>") { ANSWER.into() } else { CALL.into() }
        },
    );
    let eps = run_episodes(&mut policy, &tok, &[p], 2, Some(&tools)).unwrap();
    assert!(!eps[0].called_tool());
    assert_eq!(eps[0].text, ANSWER);
    assert!(eps[0].policy_mask.iter().all(|m| *m));
    assert_eq!(eps[1].tool_calls.len(), 1, "max_turns 1: the second call is not run");
    assert_eq!(toolbox.invocations.lock().unwrap().len(), 1);
    // Without a stop string the second call runs to eos; it is the text that gets scored.
    assert_eq!(eps[1].final_answer, CALL);

    let stats = ToolStats::over(eps.iter().zip([0.25, 1.0]).map(|(e, r)| e.tool_use(r)));
    assert_eq!((stats.call_fraction, stats.calls, stats.errors), (0.5, 1, 0));
    assert_eq!((stats.reward_with_tool, stats.reward_without_tool), (Some(1.0), Some(0.25)));
    let none = ToolStats::over([eps[0].tool_use(0.25)]);
    assert_eq!((none.call_fraction, none.reward_with_tool), (0.0, None));
    assert!(none.seconds.is_sign_positive(), "no tool time is +0, not -0");
}

#[test]
fn two_tool_turns_when_allowed() {
    let tok = chatml_byte_tokenizer().unwrap();
    let tools = tool_use(Arc::new(FakeToolBox::default()), 2, "auto");
    let p = prompt(&tok, &tools, "task");
    let mut policy =
        ScriptedPolicy::new(tok.clone(), |ctx: &str, _| if ctx.matches("<tool_response>").count() >= 2 { ANSWER.into() } else { CALL.into() });
    let log = policy.log.clone();
    let e = run_episodes(&mut policy, &tok, &[p], 2, Some(&tools)).unwrap().remove(0);
    assert_eq!(e.tool_calls.iter().map(|c| c.turn).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(e.final_answer, ANSWER);
    let log = log.lock().unwrap();
    assert_eq!(log[1].stop_strings, vec!["</tool_call>".to_string()], "a second tool turn is still allowed");
    assert!(log[2].stop_strings.is_empty());
}

#[test]
fn smollm2_and_fenced_formats_run_calls_too() {
    let tok = chatml_byte_tokenizer().unwrap();
    for (format, call, marker) in [
        ("smollm2", "<tool_call>[{\"name\": \"search\", \"arguments\": {\"query\": \"lsass\"}}]</tool_call>", "<|im_start|>tool\nquery: lsass"),
        (
            "fenced",
            "```tool_call\n{\"tool\": \"search\", \"arguments\": {\"query\": \"lsass\"}}\n```",
            "<|im_start|>user\nTool result (search):\nquery: lsass",
        ),
    ] {
        let tools = tool_use(Arc::new(FakeToolBox::default()), 1, format);
        let p = prompt(&tok, &tools, "task");
        let mut policy =
            ScriptedPolicy::new(tok.clone(), move |ctx: &str, _| if ctx.contains(FAKE_SEARCH_HIT) { ANSWER.into() } else { call.into() });
        let e = run_episodes(&mut policy, &tok, &[p], 2, Some(&tools)).unwrap().remove(0);
        assert!(e.transcript.contains(marker), "{format}: {}", e.transcript);
        assert_eq!(e.final_answer, ANSWER, "{format}");
        // The fenced call ended with eos (<|im_end|>): only the newline is inserted before the result turn.
        assert!(!e.transcript.contains("<|im_end|><|im_end|>"), "{format}: {}", e.transcript);
    }
}

#[test]
fn tools_off_or_without_chatml_or_with_bad_config() {
    let tok = chatml_byte_tokenizer().unwrap();
    let tb = Arc::new(FakeToolBox::default());
    assert!(ToolUse::new(tb.clone(), &tools_cfg(0, "auto"), Family::Qwen3, &tok).unwrap().is_none());
    let llama = ToolUse::new(tb.clone(), &tools_cfg(1, "auto"), Family::Llama, &tok).unwrap().unwrap();
    assert_eq!(llama.format(), ToolFormat::SmolLm2);
    let word_level = crate::testing::tiny_tokenizer(64).unwrap();
    let err = ToolUse::new(tb.clone(), &tools_cfg(1, "auto"), Family::Qwen3, &word_level).err().unwrap().to_string();
    assert!(err.contains("<|im_start|>") && err.contains("tools.max_turns"), "{err}");
    let err = ToolUse::new(tb, &tools_cfg(1, "xml"), Family::Qwen3, &tok).err().unwrap().to_string();
    assert!(err.contains("tools.format") && err.contains("xml"), "{err}");
}

#[test]
fn long_results_are_cut_with_a_note() {
    assert_eq!(cap_chars("héllo".into(), 10), "héllo");
    assert_eq!(cap_chars("héllo".into(), 2), "hé\n[result cut at 2 characters]");
}

#[test]
fn offering_tools_extends_an_existing_system_prompt() {
    let tools = tool_use(Arc::new(FakeToolBox::default()), 1, "auto");
    let m = tools.offer(&[ChatMessage::new("system", "You write Sigma rules."), ChatMessage::new("user", "x")]);
    assert_eq!(m.len(), 2);
    assert!(m[0].content.starts_with("You write Sigma rules.\n\n# Tools"), "{}", m[0].content);
    let m = tools.offer(&[ChatMessage::new("user", "x")]);
    assert_eq!((m.len(), m[0].role.as_str()), (2, "system"));
}

mod harmony_format {
    use super::*;
    use crate::testing::harmony_byte_tokenizer;

    const ANALYSIS: &str = "<|channel|>analysis<|message|>I need the 4688 document.<|end|>";
    const CALL: &str =
        "<|start|>assistant<|channel|>commentary to=functions.search <|constrain|>json<|message|>{\"query\": \"process creation 4688\"}<|call|>";
    const FINAL: &str = "<|channel|>analysis<|message|>Found it.<|end|><|start|>assistant<|channel|>final<|message|>";

    fn harmony_tools(tok: &Tokenizer, max_turns: usize) -> (Arc<FakeToolBox>, ToolUse) {
        let toolbox = Arc::new(FakeToolBox::default());
        let tools = ToolUse::new(toolbox.clone(), &tools_cfg(max_turns, "auto"), Family::Qwen3, tok).unwrap().expect("tools on");
        (toolbox, tools)
    }

    fn harmony_prompt(tok: &Tokenizer, tools: &ToolUse) -> Vec<u32> {
        let messages = [ChatMessage::new("system", "You write Sigma rules."), ChatMessage::new("user", "Write a rule for process creation.")];
        tok.encode(&tools.render_prompt(tok, &messages).unwrap(), false).unwrap()
    }

    #[test]
    fn a_harmony_tool_turn_is_parsed_run_and_only_the_final_channel_is_the_answer() {
        let tok = harmony_byte_tokenizer().unwrap();
        let (toolbox, tools) = harmony_tools(&tok, 1);
        // The vocabulary picks harmony whatever the family says.
        assert_eq!(tools.format(), ToolFormat::Harmony);
        let p = harmony_prompt(&tok, &tools);
        let prompt_text = tok.decode(&p, false).unwrap();
        assert!(prompt_text.contains("Calls to these tools must go to the commentary channel: 'functions'.<|end|>"), "{prompt_text}");
        assert!(
            prompt_text.contains("<|start|>developer<|message|># Instructions\n\nYou write Sigma rules.\n\n# Tools\n\n## functions\n\nnamespace functions {\n\n// Search the knowledge base.\ntype search = (_: {\nquery: string,\n}) => any;\n\n// Always refuses.\ntype fail = () => any;"),
            "{prompt_text}"
        );
        assert!(prompt_text.ends_with("<|start|>user<|message|>Write a rule for process creation.<|end|><|start|>assistant"), "{prompt_text}");

        let first = format!("{ANALYSIS}{CALL}");
        let script_first = first.clone();
        let mut policy = ScriptedPolicy::new(tok.clone(), move |ctx: &str, _| {
            if ctx.contains("<|start|>functions.search to=assistant") { format!("{FINAL}{ANSWER}") } else { script_first.clone() }
        });
        let log = policy.log.clone();
        let e = run_episodes(&mut policy, &tok, std::slice::from_ref(&p), 2, Some(&tools)).unwrap().remove(0);

        assert_eq!(toolbox.invocations.lock().unwrap()[0], ("search".to_string(), "{\"query\":\"process creation 4688\"}".to_string()));
        assert_eq!(e.tool_calls.len(), 1);
        assert!(!e.tool_calls[0].is_error, "{:?}", e.tool_calls[0]);
        let result_turn = format!(
            "<|start|>functions.search to=assistant<|channel|>commentary<|message|>query: process creation 4688\n{FAKE_SEARCH_HIT}<|end|><|start|>assistant"
        );
        // The call ended on <|call|> (the stop): nothing is added before the tool's message.
        assert_eq!(e.transcript, format!("{first}{result_turn}{FINAL}{ANSWER}<|return|>"));
        assert_eq!(e.final_answer, ANSWER, "the reward sees the final channel only");
        assert_eq!(e.reward_text(RewardText::FinalAnswer), ANSWER);
        let pick = |want: bool| -> Vec<u32> { e.completion_ids.iter().zip(&e.policy_mask).filter(|(_, m)| **m == want).map(|(t, _)| *t).collect() };
        assert_eq!(tok.decode(&pick(false), false).unwrap(), result_turn);
        assert_eq!(tok.decode(&pick(true), false).unwrap(), format!("{first}{FINAL}{ANSWER}<|return|>"));

        let log = log.lock().unwrap();
        assert_eq!(log[0].stop_strings, vec!["<|call|>".to_string()]);
        assert_eq!(log[1].contexts[0], format!("{prompt_text}{first}{result_turn}"));
    }

    #[test]
    fn malformed_harmony_answers_the_model_or_scores_nothing() {
        let tok = harmony_byte_tokenizer().unwrap();
        let (_, tools) = harmony_tools(&tok, 1);
        let call = |recipient: &str, args: &str| format!("<|channel|>commentary to={recipient} <|constrain|>json<|message|>{args}<|call|>");
        let cases = [
            (
                call("functions.search", "{\"query\": "),
                "<|start|>functions.search to=assistant<|channel|>commentary<|message|>Error: the arguments of tool `search` are not valid JSON",
            ),
            (
                call("functions.google", "{}"),
                "<|start|>functions.google to=assistant<|channel|>commentary<|message|>Error: unknown tool `google`; available tools: search, fail, crash, panic",
            ),
            (call("python", "print(1)"), "<|start|>functions.python to=assistant<|channel|>commentary<|message|>Error: unknown tool `python`"),
        ];
        for (reply, error) in cases {
            let p = harmony_prompt(&tok, &tools);
            let r = reply.clone();
            let mut policy =
                ScriptedPolicy::new(tok.clone(), move |ctx: &str, _| if ctx.contains("Error: ") { format!("{FINAL}{ANSWER}") } else { r.clone() });
            let e = run_episodes(&mut policy, &tok, &[p], 1, Some(&tools)).unwrap().remove(0);
            assert_eq!(e.tool_errors(), 1, "{reply}");
            assert!(e.transcript.contains(error), "{reply}: {}", e.transcript);
            assert_eq!(e.final_answer, ANSWER, "{reply}: the episode continues to an answer");
        }
        // No final channel (only reasoning, or a call after the last allowed turn): no answer.
        let p = harmony_prompt(&tok, &tools);
        let mut policy = ScriptedPolicy::new(tok.clone(), |_: &str, _| "<|channel|>analysis<|message|>Hmm.".to_string());
        let e = run_episodes(&mut policy, &tok, std::slice::from_ref(&p), 1, Some(&tools)).unwrap().remove(0);
        assert!(!e.called_tool());
        assert_eq!(e.final_answer, "");
        assert!(e.transcript.ends_with("Hmm.<|return|>"), "{}", e.transcript);
        let mut policy = ScriptedPolicy::new(tok.clone(), |_: &str, _| format!("{ANALYSIS}{CALL}"));
        let e = run_episodes(&mut policy, &tok, &[p], 1, Some(&tools)).unwrap().remove(0);
        assert_eq!(e.tool_calls.len(), 1, "max_turns 1");
        assert_eq!(e.final_answer, "", "a call is not an answer");
    }

    #[test]
    fn without_tools_the_final_channel_is_still_the_answer() {
        let tok = harmony_byte_tokenizer().unwrap();
        assert_eq!(tok.chat_format(), ChatFormat::Harmony);
        // <|return|> (the eos) and <|call|> both stop generation.
        let stops: Vec<String> = tok.eos_token_ids().iter().map(|&i| tok.inner().id_to_token(i).unwrap()).collect();
        assert_eq!(stops, ["<|return|>", "<|call|>"]);
        let p = tok.encode(&tok.apply_chat_template(&[ChatMessage::new("user", "2+2?")], true, None).unwrap(), false).unwrap();
        let mut policy = ScriptedPolicy::new(tok.clone(), |_: &str, _| {
            "<|channel|>analysis<|message|>Simple.<|end|><|start|>assistant<|channel|>final<|message|>4".to_string()
        });
        let e = run_episodes(&mut policy, &tok, &[p], 1, None).unwrap().remove(0);
        assert_eq!(e.final_answer, "4");
        assert_eq!(e.reward_text(RewardText::FinalAnswer), "4");
    }

    #[test]
    fn harmony_needs_its_tokens() {
        let chatml = chatml_byte_tokenizer().unwrap();
        let err = ToolUse::new(Arc::new(FakeToolBox::default()), &tools_cfg(1, "harmony"), Family::Qwen3, &chatml).err().unwrap().to_string();
        assert!(err.contains("harmony") && err.contains("<|start|>"), "{err}");
        let harmony = harmony_byte_tokenizer().unwrap();
        let err = ToolUse::new(Arc::new(FakeToolBox::default()), &tools_cfg(1, "hermes"), Family::Qwen3, &harmony).err().unwrap().to_string();
        assert!(err.contains("ChatML") && err.contains("<|im_start|>"), "{err}");
    }
}
