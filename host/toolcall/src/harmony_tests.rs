use serde_json::json;

use super::*;
use crate::{ToolFormat, ToolResult, parse_tool_calls, system_prompt_with_tools, tool_turn_text};

/// The function-calling example of openai/harmony's format guide (docs/format.md, "Handling
/// tool calls"): the whole input after the tool's result, byte for byte.
const GUIDE_EXAMPLE: &str = "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n\
Knowledge cutoff: 2024-06\nCurrent date: 2025-06-28\n\nReasoning: high\n\n\
# Valid channels: analysis, commentary, final. Channel must be included for every message.\n\
Calls to these tools must go to the commentary channel: 'functions'.<|end|>\
<|start|>developer<|message|># Instructions\n\nUse a friendly tone.\n\n# Tools\n\n## functions\n\nnamespace functions {\n\n\
// Gets the location of the user.\ntype get_location = () => any;\n\n\
// Gets the current weather in the provided location.\ntype get_current_weather = (_: {\n\
// The city and state, e.g. San Francisco, CA\nlocation: string,\n\
format?: \"celsius\" | \"fahrenheit\", // default: celsius\n}) => any;\n\n\
// Gets the current weather in the provided list of locations.\ntype get_multiple_weathers = (_: {\n\
// List of city and state, e.g. [\"San Francisco, CA\", \"New York, NY\"]\nlocations: string[],\n\
format?: \"celsius\" | \"fahrenheit\", // default: celsius\n}) => any;\n\n\
} // namespace functions<|end|><|start|>user<|message|>What is the weather like in SF?<|end|>\
<|start|>assistant<|channel|>analysis<|message|>Need to use function get_weather.<|end|>\
<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"location\":\"San Francisco\"}<|call|>\
<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{\"sunny\": true, \"temperature\": 20}<|end|>\
<|start|>assistant";

pub(crate) fn guide_tools() -> Vec<ToolSpec> {
    let format = json!({"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"});
    vec![
        ToolSpec { name: "get_location".into(), description: "Gets the location of the user.".into(), parameters: json!({"type": "object"}) },
        ToolSpec {
            name: "get_current_weather".into(),
            description: "Gets the current weather in the provided location.".into(),
            parameters: json!({"type": "object", "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "format": format}, "required": ["location"]}),
        },
        ToolSpec {
            name: "get_multiple_weathers".into(),
            description: "Gets the current weather in the provided list of locations.".into(),
            parameters: json!({"type": "object", "properties": {
                "locations": {"type": "array", "items": {"type": "string"},
                              "description": "List of city and state, e.g. [\"San Francisco, CA\", \"New York, NY\"]"},
                "format": format}, "required": ["locations"]}),
        },
    ]
}

fn guide_system() -> SystemOptions {
    SystemOptions { current_date: Some("2025-06-28".into()), reasoning_effort: Some("high".into()), ..SystemOptions::default() }
}

#[test]
fn renders_the_format_guides_function_calling_example() {
    let tools = guide_tools();
    let conversation = [
        HarmonyMessage::new("system", &system_body(&guide_system(), true)),
        HarmonyMessage::new("developer", &developer_body(Some("Use a friendly tone."), &tools)),
        HarmonyMessage::new("user", "What is the weather like in SF?"),
        HarmonyMessage::new("assistant", "Need to use function get_weather.").with_channel("analysis"),
        HarmonyMessage::new("assistant", "{\"location\":\"San Francisco\"}")
            .with_channel("commentary")
            .with_recipient("functions.get_weather")
            .with_content_type("json"),
    ];
    let mut text: String = conversation.iter().map(HarmonyMessage::render).collect();
    // The result turn as the tool loop writes it (get_weather is not among the tools: the
    // guide's example calls a function it did not define; the result is rendered all the same).
    text.push_str(&tool_turn_text(ToolFormat::Harmony, &[ToolResult::ok("get_weather", "{\"sunny\": true, \"temperature\": 20}".into())]));
    assert_eq!(text, GUIDE_EXAMPLE);
    // The developer body is what tools offer in place of a system prompt.
    assert_eq!(
        system_prompt_with_tools(ToolFormat::Harmony, Some("Use a friendly tone."), &tools),
        developer_body(Some("Use a friendly tone."), &tools)
    );
}

#[test]
fn the_guides_basic_system_and_developer_messages() {
    let basic = "You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06\nCurrent date: 2025-06-28\n\n\
                 Reasoning: high\n\n# Valid channels: analysis, commentary, final. Channel must be included for every message.";
    assert_eq!(system_body(&guide_system(), false), basic);
    assert_eq!(
        HarmonyMessage::new("developer", &developer_body(Some("{instructions}"), &[])).render(),
        "<|start|>developer<|message|># Instructions\n\n{instructions}<|end|>"
    );
}

#[test]
fn the_guides_transcript_parses_back_into_its_messages() {
    let msgs = parse_messages(GUIDE_EXAMPLE, None).unwrap();
    let heads: Vec<(&str, Option<&str>, Option<&str>, MessageEnd)> =
        msgs.iter().map(|m| (m.author.as_str(), m.channel.as_deref(), m.recipient.as_deref(), m.end)).collect();
    assert_eq!(
        heads,
        [
            ("system", None, None, MessageEnd::End),
            ("developer", None, None, MessageEnd::End),
            ("user", None, None, MessageEnd::End),
            ("assistant", Some("analysis"), None, MessageEnd::End),
            ("assistant", Some("commentary"), Some("functions.get_weather"), MessageEnd::Call),
            ("functions.get_weather", Some("commentary"), Some("assistant"), MessageEnd::End),
            ("assistant", None, None, MessageEnd::Open),
        ]
    );
    assert_eq!(msgs[4].content_type.as_deref(), Some("json"));
    assert_eq!(msgs[4].content, "{\"location\":\"San Francisco\"}");
    // Spans cover the text without gaps.
    assert_eq!(msgs.iter().map(|m| &GUIDE_EXAMPLE[m.span.clone()]).collect::<String>(), GUIDE_EXAMPLE);
}

/// What gpt-oss writes after `<|start|>assistant`: reasoning, then a call.
const CALL_COMPLETION: &str = "<|channel|>analysis<|message|>Need to search.<|end|>\
    <|start|>assistant<|channel|>commentary to=functions.search <|constrain|>json<|message|>{\"query\": \"4688\"}<|call|>";

fn search_tools() -> Vec<ToolSpec> {
    vec![ToolSpec::from_wit("search", "Search.", r#"{"type":"object","properties":{"query":{"type":"string"}},"required":["query"]}"#).unwrap()]
}

#[test]
fn a_completion_with_reasoning_then_a_call_is_one_call() {
    let attempts = parse_tool_calls(ToolFormat::Harmony, CALL_COMPLETION, &search_tools());
    assert_eq!(attempts.len(), 1);
    let call = attempts[0].result.as_ref().unwrap();
    assert_eq!((call.name.as_str(), call.arguments_json().as_str()), ("search", r#"{"query":"4688"}"#));
    assert!(CALL_COMPLETION[call.span.clone()].starts_with("<|start|>assistant<|channel|>commentary"), "{:?}", call.span);
    // The recipient may also sit with the author, and the stop token may be missing.
    let alt = " to=functions.search<|channel|>commentary json<|message|>{\"query\": \"x\"}";
    let attempts = parse_tool_calls(ToolFormat::Harmony, alt, &search_tools());
    assert_eq!(attempts[0].result.as_ref().unwrap().arguments["query"], "x");
    // No call without a recipient: the analysis and the final answer are not calls.
    let answer = "<|channel|>analysis<|message|>easy<|end|><|start|>assistant<|channel|>final<|message|>42<|return|>";
    assert!(parse_tool_calls(ToolFormat::Harmony, answer, &search_tools()).is_empty());
    assert_eq!(final_answer(answer).unwrap(), "42");
}

#[test]
fn malformed_calls_are_errors_for_the_model() {
    let tools = search_tools();
    let only_err = |text: &str| {
        let mut a = parse_tool_calls(ToolFormat::Harmony, text, &tools);
        assert_eq!(a.len(), 1, "{text}");
        a.remove(0).result.unwrap_err()
    };
    let bad_json = "<|channel|>commentary to=functions.search <|constrain|>json<|message|>{\"query\": }<|call|>";
    let err = only_err(bad_json);
    assert!(matches!(&err, ToolCallError::InvalidArguments { name, .. } if name == "search"), "{err:?}");
    assert!(err.to_string().starts_with("the arguments of tool `search` are not valid JSON"), "{err}");
    let err = only_err("<|channel|>commentary to=functions.search<|message|><|call|>");
    assert_eq!(err.to_string(), "the arguments of tool `search` are not valid JSON (the arguments are empty)");
    let err = only_err("<|channel|>commentary to=functions.search<|message|>[1]<|call|>");
    assert!(matches!(err, ToolCallError::ArgumentsNotObject { .. }), "{err:?}");
    let err = only_err("<|channel|>commentary to=functions.google<|message|>{}<|call|>");
    assert_eq!(err.to_string(), "unknown tool `google`; available tools: search");
    // gpt-oss's built-in tools are not ours: the recipient is named as written.
    let err = only_err("<|channel|>analysis to=browser.search<|message|>{\"query\": \"x\"}<|call|>");
    assert_eq!(err.tool_name(), Some("browser.search"));
    let turn = tool_turn_text(ToolFormat::Harmony, &[ToolResult::error(&err)]);
    assert!(turn.starts_with("<|start|>browser.search to=assistant<|channel|>commentary<|message|>Error: unknown tool"), "{turn}");
}

#[test]
fn the_final_channel_is_the_answer_and_its_absence_is_an_error() {
    let text = "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>detection: x<|return|>";
    assert_eq!(final_answer(text).unwrap(), "detection: x");
    // Ended by <|end|> or cut by the token limit: still the final channel's text.
    assert_eq!(final_answer("<|channel|>final<|message|>a<|end|>").unwrap(), "a");
    assert_eq!(final_answer("<|channel|>final<|message|>partial ans").unwrap(), "partial ans");
    let err = final_answer("<|channel|>analysis<|message|>only thinking<|end|>").unwrap_err();
    assert_eq!(err.to_string(), "the completion has no message on the final channel (channels: analysis)");
    let err = final_answer("no harmony at all").unwrap_err();
    assert!(matches!(err, HarmonyError::UnterminatedHeader { .. }), "{err:?}");
    assert!(err.to_string().contains("no <|message|>"), "{err}");
    let err = final_answer("<|channel|>final<|message|>a<|end|>stray").unwrap_err();
    assert_eq!(err.to_string(), "text outside any harmony message at byte 35: \"stray\" (expected <|start|>)");
    assert_eq!(final_answer("").unwrap_err(), HarmonyError::NoFinalChannel { channels: vec![] });
}

#[test]
fn tool_results_go_back_as_tool_messages_then_the_assistant_continues() {
    let results =
        [ToolResult::ok("search", "hits".into()), ToolResult::error(&ToolCallError::ToolFailed { name: "search".into(), message: "no".into() })];
    assert_eq!(
        tool_turn_text(ToolFormat::Harmony, &results),
        "<|start|>functions.search to=assistant<|channel|>commentary<|message|>hits<|end|>\
         <|start|>functions.search to=assistant<|channel|>commentary<|message|>Error: tool `search` returned an error: no<|end|><|start|>assistant"
    );
    assert_eq!(ToolFormat::Harmony.call_end(), ("<|call|>", "<|call|>"));
    assert_eq!(ToolFormat::Harmony.stop_sequences(), ["<|call|>"]);
    assert_eq!("harmony".parse::<ToolFormat>(), Ok(ToolFormat::Harmony));
    assert_eq!(ToolFormat::for_family("gpt_oss"), ToolFormat::Harmony);
}

#[test]
fn schemas_become_typescript() {
    let schema = json!({"type": "object", "properties": {
        "k": {"type": "integer", "description": "How many.\nAt most 10.", "default": 5},
        "mode": {"type": ["string", "null"]},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}},
        "opts": {"type": "object", "properties": {"deep": {"type": "boolean"}}, "required": ["deep"]},
        "any": {},
        "either": {"oneOf": [{"type": "string"}, {"type": "number"}]},
        "name": {"type": "string", "default": "x", "nullable": true}}, "required": ["k"]});
    let tool = ToolSpec { name: "t".into(), description: "Line one.\nLine two.".into(), parameters: schema };
    let expected = "# Tools\n\n## functions\n\nnamespace functions {\n\n// Line one.\n// Line two.\ntype t = (_: {\n\
        // How many.\n// At most 10.\nk: number, // default: 5\nmode?: string | null,\ntags?: Array<\"a\" | \"b\">,\n\
        opts?: {\n    deep: boolean,\n    },\nany?: any,\neither?: string | number,\nname?: string | null, // default: \"x\"\n}) => any;\n\n\
        } // namespace functions";
    assert_eq!(tools_section(&[tool]), expected);
}
