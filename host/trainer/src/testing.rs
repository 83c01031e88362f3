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
    let inner: tokenizers::Tokenizer =
        tj.to_string().parse().map_err(|e| anyhow::anyhow!("tiny tokenizer: {e}"))?;
    let template = "{% for m in messages %}<bos> {{ m.content }} {% endfor %}{% if add_generation_prompt %}<bos>{% endif %}";
    Tokenizer::new(
        inner,
        Some(template.to_string()),
        Some("<bos>".into()),
        Some("<eos>".into()),
        Some("<pad>".into()),
        &[],
    )
}
