//! Tokenizer wrapper: a Hugging Face `tokenizers::Tokenizer` plus what `tokenizer_config.json`
//! adds (special tokens, the Jinja chat template).

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chat_template;
use super::harmony::{self, ChatFormat};

/// One chat turn. `tool_calls` / `name` are passed to the template when present.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into(), tool_calls: None, name: None }
    }
}

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    eos_token_ids: Vec<u32>,
    pad_token_id: u32,
    chat_format: ChatFormat,
}

/// `"<s>"` or `{"content": "<s>", ...}` (both appear in tokenizer_config.json files).
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Assemble from parts. `eos_token_ids` are extra end-of-sequence ids (e.g. from
    /// config.json / generation_config.json); the id of `eos_token` is always included. A
    /// vocabulary with harmony's special tokens (gpt-oss) writes prompts in the harmony format
    /// and also stops at `<|return|>` and `<|call|>`, its two stop tokens.
    pub fn new(
        inner: tokenizers::Tokenizer,
        chat_template: Option<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
        pad_token: Option<String>,
        eos_token_ids: &[u32],
    ) -> Result<Self> {
        let mut eos: Vec<u32> = eos_token_ids.to_vec();
        if let Some(e) = &eos_token {
            let id = inner.token_to_id(e).with_context(|| format!("eos token {e:?} is not in the vocabulary"))?;
            if !eos.contains(&id) {
                eos.insert(0, id);
            }
        }
        let chat_format = ChatFormat::detect(|t| inner.token_to_id(t).is_some());
        if chat_format == ChatFormat::Harmony {
            for stop in [sigmaforge_toolcall::harmony::RETURN, sigmaforge_toolcall::harmony::CALL] {
                let id = inner.token_to_id(stop).with_context(|| format!("harmony stop token {stop} is not in the vocabulary"))?;
                if !eos.contains(&id) {
                    eos.push(id);
                }
            }
        }
        let pad_token_id = pad_token.as_deref().and_then(|p| inner.token_to_id(p)).or_else(|| eos.first().copied()).unwrap_or(0);
        Ok(Self { inner, chat_template, bos_token, eos_token, eos_token_ids: eos, pad_token_id, chat_format })
    }

    /// tokenizer.json (+ tokenizer_config.json / chat_template.jinja / generation_config.json
    /// when present) from a Hugging Face model directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&tj).map_err(|e| anyhow::anyhow!("cannot load {}: {e}", tj.display()))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", cfg_path.display()))?
        } else {
            Value::Null
        };
        let jinja = dir.join("chat_template.jinja");
        let chat_template = if jinja.exists() {
            Some(std::fs::read_to_string(&jinja).with_context(|| format!("reading {}", jinja.display()))?)
        } else {
            match cfg.get("chat_template") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                // Named templates: [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template").and_then(Value::as_str))
                    .map(str::to_string),
                Some(other) => bail!("{}: chat_template has unexpected type: {other}", cfg_path.display()),
            }
        };
        let mut eos_ids = Vec::new();
        let gen_path = dir.join("generation_config.json");
        if gen_path.exists()
            && let Ok(gen_cfg) = serde_json::from_str::<Value>(&std::fs::read_to_string(&gen_path)?)
        {
            match gen_cfg.get("eos_token_id") {
                Some(Value::Array(a)) => eos_ids.extend(a.iter().filter_map(Value::as_u64).map(|x| x as u32)),
                Some(x) => eos_ids.extend(x.as_u64().map(|x| x as u32)),
                None => {}
            }
        }
        Self::new(
            inner,
            chat_template,
            token_string(cfg.get("bos_token")),
            token_string(cfg.get("eos_token")),
            token_string(cfg.get("pad_token")),
            &eos_ids,
        )
    }

    /// Also end completions at these ids (e.g. config.json's eos_token_id list).
    pub fn add_eos_ids(&mut self, ids: &[u32]) {
        for id in ids {
            if !self.eos_token_ids.contains(id) {
                self.eos_token_ids.push(*id);
            }
        }
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// How prompts are written: the Jinja template, or harmony for gpt-oss vocabularies.
    pub fn chat_format(&self) -> ChatFormat {
        self.chat_format
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| anyhow::anyhow!("tokenizing failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| anyhow::anyhow!("detokenizing failed: {e}"))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Ids that end a completion (the eos token and any extra ones from the model config).
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// Left-padding id (the pad token, else the first eos id). Padded positions are masked, so
    /// the value only has to be a valid id.
    pub fn pad_token_id(&self) -> u32 {
        self.pad_token_id
    }

    /// Render the chat template the way `transformers`' `apply_chat_template(tokenize=False)`
    /// does.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool, tools: Option<&[Value]>) -> Result<String> {
        self.apply_chat_template_with(messages, add_generation_prompt, tools, &Value::Null)
    }

    /// Like [`Self::apply_chat_template`] with extra template variables (an object), e.g.
    /// `{"enable_thinking": false}` for Qwen3, `{"reasoning_effort": "high"}` for harmony.
    pub fn apply_chat_template_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&[Value]>,
        extra: &Value,
    ) -> Result<String> {
        if self.chat_format == ChatFormat::Harmony {
            return harmony::render(messages, add_generation_prompt, tools, extra);
        }
        let template = self.chat_template.as_deref().context("this tokenizer has no chat template (tokenizer_config.json has no chat_template)")?;
        chat_template::render(template, messages, add_generation_prompt, tools, self.bos_token.as_deref(), self.eos_token.as_deref(), extra)
    }

    /// Write tokenizer.json and a tokenizer_config.json (special tokens + chat template), so an
    /// exported model directory is self-contained.
    pub fn save_hf_files(&self, dir: &Path) -> Result<()> {
        let tj = dir.join("tokenizer.json");
        self.inner.save(&tj, false).map_err(|e| anyhow::anyhow!("writing {}: {e}", tj.display()))?;
        let pad = self.inner.id_to_token(self.pad_token_id);
        let cfg = serde_json::json!({
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": pad,
            "chat_template": self.chat_template,
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": false,
        });
        let path = dir.join("tokenizer_config.json");
        std::fs::write(&path, serde_json::to_string_pretty(&cfg)?).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}
