//! Small fixtures for tests (this crate's and the GRPO trainer's): a word-level tokenizer that
//! fits the tiny model configs.

use anyhow::Result;
use serde_json::json;

use crate::load::Tokenizer;

/// Word-level tokenizer over `vocab_size` ids: 0 `<pad>`, 1 `<eos>`, 2 `<bos>`, 3 `<unk>`, then
/// words "w4" … "w{vocab_size-1}" separated by spaces. Its chat template writes each message as
/// `<bos> {content}` and the generation prompt as `<bos>`. Matches `ModelConfig::tiny_*` (eos 1).
pub fn tiny_tokenizer(vocab_size: usize) -> Result<Tokenizer> {
    anyhow::ensure!(vocab_size > 4, "tiny_tokenizer needs more than 4 ids");
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["<pad>", "<eos>", "<bos>", "<unk>"].iter().enumerate() {
        vocab.insert(t.to_string(), json!(i));
    }
    for i in 4..vocab_size {
        vocab.insert(format!("w{i}"), json!(i));
    }
    let special = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    let tj = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<pad>"), special(1, "<eos>"), special(2, "<bos>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    });
    let inner: tokenizers::Tokenizer = tj.to_string().parse().map_err(|e| anyhow::anyhow!("tiny tokenizer: {e}"))?;
    let template = "{% for m in messages %}<bos> {{ m.content }} {% endfor %}{% if add_generation_prompt %}<bos>{% endif %}";
    Tokenizer::new(inner, Some(template.to_string()), Some("<bos>".into()), Some("<eos>".into()), Some("<pad>".into()), &[])
}

/// Ids of [`chatml_byte_tokenizer`]'s special tokens; bytes follow from [`BYTE_BASE`].
pub const CHATML_PAD: u32 = 0;
pub const CHATML_IM_END: u32 = 1;
pub const CHATML_IM_START: u32 = 2;
pub const BYTE_BASE: u32 = 3;
/// Vocabulary size of [`chatml_byte_tokenizer`]: 3 specials + 256 bytes.
pub const CHATML_BYTE_VOCAB: usize = 259;

/// A byte-level tokenizer with a ChatML chat template, for tests that must encode arbitrary
/// text such as JSON tool calls: every byte is one token (`BYTE_BASE + byte`), and
/// `<|im_start|>` / `<|im_end|>` (the eos) are special tokens, as in Qwen3 and SmolLM2. Built
/// as a GPT-2 style byte-level BPE without merges, so decoding any token window works the way
/// it does for real models.
pub fn chatml_byte_tokenizer() -> Result<Tokenizer> {
    let inner = byte_level_bpe(&["<|pad|>", "<|im_end|>", "<|im_start|>"])?;
    let template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
                    {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    Tokenizer::new(inner, Some(template.to_string()), None, Some("<|im_end|>".into()), Some("<|pad|>".into()), &[])
}

/// Special tokens of [`harmony_byte_tokenizer`], in id order; bytes follow from
/// [`HARMONY_BYTE_BASE`].
pub const HARMONY_SPECIALS: [&str; 8] =
    ["<|endoftext|>", "<|return|>", "<|constrain|>", "<|channel|>", "<|start|>", "<|end|>", "<|message|>", "<|call|>"];
pub const HARMONY_BYTE_BASE: u32 = HARMONY_SPECIALS.len() as u32;
/// Vocabulary size of [`harmony_byte_tokenizer`]: 8 specials + 256 bytes.
pub const HARMONY_BYTE_VOCAB: usize = HARMONY_SPECIALS.len() + 256;

/// A byte-level tokenizer with gpt-oss's harmony special tokens (`<|start|>`, `<|channel|>`,
/// `<|message|>`, `<|end|>`, `<|return|>` (the eos), `<|call|>`, `<|constrain|>`) and no chat
/// template: its prompts are written in the harmony format, as for o200k_harmony.
pub fn harmony_byte_tokenizer() -> Result<Tokenizer> {
    let inner = byte_level_bpe(&HARMONY_SPECIALS)?;
    Tokenizer::new(inner, None, None, Some("<|return|>".into()), Some("<|endoftext|>".into()), &[])
}

/// GPT-2 style byte-level BPE without merges: `specials` take ids 0.., each byte one token after them.
fn byte_level_bpe(specials: &[&str]) -> Result<tokenizers::Tokenizer> {
    let mut vocab = serde_json::Map::new();
    for (i, t) in specials.iter().enumerate() {
        vocab.insert(t.to_string(), json!(i));
    }
    for (byte, ch) in gpt2_byte_chars().into_iter().enumerate() {
        vocab.insert(ch.to_string(), json!(specials.len() + byte));
    }
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(id, content)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let tj = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []},
    });
    tj.to_string().parse().map_err(|e| anyhow::anyhow!("byte-level test tokenizer: {e}"))
}

/// GPT-2's byte → printable character table (what byte-level BPE vocabularies are written in).
fn gpt2_byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).expect("latin-1")
            } else {
                extra += 1;
                char::from_u32(255 + extra).expect("valid code point")
            }
        })
        .collect()
}

/// A policy that writes what a script says instead of sampling, to drive episodes (and whole
/// training steps) deterministically. The script gets the context decoded with special tokens
/// kept and the copy index within the call (0..copies) and returns the next segment's text.
/// Like the model, a segment ends right after the first stop string it contains; otherwise it
/// ends with the tokenizer's first eos (`<|im_end|>`, harmony's `<|return|>`). Every scripted token gets log-prob -1.
pub struct ScriptedPolicy {
    tokenizer: Tokenizer,
    script: Script,
    /// Every call: (contexts as text, copies, stop strings).
    pub log: std::sync::Arc<std::sync::Mutex<Vec<ScriptedCall>>>,
}

/// (context text, copy index) → the next segment's text.
type Script = Box<dyn FnMut(&str, usize) -> String + Send>;

#[derive(Debug, Clone, PartialEq)]
pub struct ScriptedCall {
    pub contexts: Vec<String>,
    pub copies: usize,
    pub stop_strings: Vec<String>,
}

impl ScriptedPolicy {
    pub fn new(tokenizer: Tokenizer, script: impl FnMut(&str, usize) -> String + Send + 'static) -> Self {
        Self { tokenizer, script: Box::new(script), log: Default::default() }
    }
}

impl crate::episode::SegmentGenerator for ScriptedPolicy {
    fn next_segments(&mut self, contexts: &[Vec<u32>], copies: usize, stop_strings: &[String]) -> Result<Vec<crate::episode::Segment>> {
        let texts: Vec<String> = contexts.iter().map(|c| self.tokenizer.decode(c, false)).collect::<Result<_>>()?;
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push(ScriptedCall {
            contexts: texts.clone(),
            copies,
            stop_strings: stop_strings.to_vec(),
        });
        let eos = *self.tokenizer.eos_token_ids().first().ok_or_else(|| anyhow::anyhow!("scripted policy: the tokenizer has no eos"))?;
        let mut out = Vec::new();
        for text in &texts {
            for copy in 0..copies {
                let reply = (self.script)(text, copy);
                let cut = stop_strings.iter().filter_map(|s| reply.find(s.as_str()).map(|i| i + s.len())).min();
                let mut ids = self.tokenizer.encode(&reply[..cut.unwrap_or(reply.len())], false)?;
                if cut.is_none() {
                    ids.push(eos);
                }
                out.push(crate::episode::Segment { logprobs: vec![-1.0; ids.len()], ids, finish: crate::generate::FinishReason::Stop });
            }
        }
        Ok(out)
    }
}

/// Tools for episode tests: `search` (answers with a fixed Security 4688 snippet naming the
/// query), `fail` (refuses every call, as a tool's own error), `crash` (reports a trap, as the
/// runtime does for a time limit or a wasm trap) and `panic` (a buggy tool box). Invocations are
/// recorded.
#[derive(Default)]
pub struct FakeToolBox {
    pub invocations: std::sync::Mutex<Vec<(String, String)>>,
}

/// What `FakeToolBox`'s search answers (after `query: <query>\n`).
pub const FAKE_SEARCH_HIT: &str = "win-security-4688: A new process has been created (EventID 4688, field CommandLine)";

impl crate::episode::ToolBox for FakeToolBox {
    fn specs(&self) -> Vec<sigmaforge_toolcall::ToolSpec> {
        let query = r#"{"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}"#;
        let none = r#"{"type": "object", "properties": {}}"#;
        [
            ("search", "Search the knowledge base.", query),
            ("fail", "Always refuses.", none),
            ("crash", "Always traps.", none),
            ("panic", "A buggy tool.", none),
        ]
        .iter()
        .map(|(n, d, p)| sigmaforge_toolcall::ToolSpec::from_wit(n, d, p).expect("valid spec"))
        .collect()
    }

    fn invoke(&self, name: &str, arguments_json: &str) -> std::result::Result<String, crate::episode::ToolInvokeError> {
        use crate::episode::ToolInvokeError;
        self.invocations.lock().unwrap_or_else(|p| p.into_inner()).push((name.to_string(), arguments_json.to_string()));
        match name {
            "search" => {
                let args: serde_json::Value = serde_json::from_str(arguments_json).map_err(|e| ToolInvokeError::Failed(e.to_string()))?;
                match args.get("query").and_then(serde_json::Value::as_str) {
                    Some(q) => Ok(format!("query: {q}\n{FAKE_SEARCH_HIT}")),
                    None => Err(ToolInvokeError::Failed("missing \"query\"".into())),
                }
            }
            "fail" => Err(ToolInvokeError::Failed("the index is empty".into())),
            "crash" => Err(ToolInvokeError::Crashed("wasm trap: unreachable instruction executed".into())),
            "panic" => panic!("fake tool box bug"),
            other => Err(ToolInvokeError::Failed(format!("no tool {other}"))),
        }
    }
}
