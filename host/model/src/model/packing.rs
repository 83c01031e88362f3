//! Packed rows: a prompt and the continuations that share it, laid out once in one row, with no
//! padding.
//!
//! A GRPO group is one prompt with G sampled completions. As G padded rows, the prompt is run G
//! times and every row is padded to the longest completion; for SmolLM2's default task (prompts
//! ~210 tokens, completions ~90 of at most 160) two thirds of the positions of an update were
//! prompt copies and padding. Packed, the row is `prompt, completion 1, …, completion G`: each
//! completion attends to the whole prompt and to its own earlier tokens (never to a sibling),
//! and its RoPE positions continue from the prompt's end, so every completion token sees exactly
//! what it sees in its own padded row — the same logits, and the same gradients, because the
//! prompt's activations now receive the sum of the gradients that its G copies received.
//!
//! A row may hold several groups one after the other (each sees only itself): the layout of
//! several independent sequences packed without padding.

use anyhow::{Result, ensure};
use candle_core::{DType, Device, Tensor};

/// Additive mask value, as in `ops` (finite: an all-masked row cannot give NaN).
const MASKED: f32 = -1e9;

/// How the positions of a forward's `input_ids` relate to each other.
#[derive(Debug, Clone, Copy)]
pub enum Layout<'a> {
    /// Independent rows and their 0/1 attention mask `[B, past + T]` (1 = real token; padding
    /// anywhere, positions count real tokens).
    Padded(&'a Tensor),
    /// One packed row (`input_ids` `[1, T]`, no KV cache).
    Packed(&'a PackedRow),
}

impl<'a> From<&'a Tensor> for Layout<'a> {
    fn from(attention_mask: &'a Tensor) -> Self {
        Layout::Padded(attention_mask)
    }
}

impl<'a> From<&'a PackedRow> for Layout<'a> {
    fn from(row: &'a PackedRow) -> Self {
        Layout::Packed(row)
    }
}

/// One prompt and the lengths of the continuations packed after it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PackedGroup {
    prompt_len: usize,
    continuation_lens: Vec<usize>,
}

/// The layout of one packed row: its groups in order. Built with [`PackedRow::pack`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedRow {
    groups: Vec<PackedGroup>,
}

/// Where position `p` of a packed row belongs.
#[derive(Clone, Copy)]
struct Slot {
    group: usize,
    /// 0 = the prompt, i + 1 = continuation i.
    segment: usize,
    /// RoPE position: within the prompt, then continuing from the prompt's end.
    position: usize,
}

impl PackedRow {
    /// Packs `(prompt, continuations)` groups into one row of token ids. Prompts must be
    /// non-empty; a continuation may be empty (a one-token completion: the row reads nothing
    /// of it, its token is predicted from the prompt's last position).
    pub fn pack(groups: &[(&[u32], Vec<&[u32]>)]) -> Result<(Vec<u32>, PackedRow)> {
        ensure!(!groups.is_empty(), "a packed row needs at least one group");
        let mut ids = Vec::new();
        let mut layout = Vec::with_capacity(groups.len());
        for (g, (prompt, continuations)) in groups.iter().enumerate() {
            ensure!(!prompt.is_empty(), "packed group {g}: the prompt is empty");
            ensure!(!continuations.is_empty(), "packed group {g}: no continuation");
            ids.extend_from_slice(prompt);
            let mut lens = Vec::with_capacity(continuations.len());
            for c in continuations {
                ids.extend_from_slice(c);
                lens.push(c.len());
            }
            layout.push(PackedGroup { prompt_len: prompt.len(), continuation_lens: lens });
        }
        Ok((ids, PackedRow { groups: layout }))
    }

    /// Positions in the row.
    pub fn len(&self) -> usize {
        self.groups.iter().map(|g| g.prompt_len + g.continuation_lens.iter().sum::<usize>()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Continuations in the row, over all groups.
    pub fn continuations(&self) -> usize {
        self.groups.iter().map(|g| g.continuation_lens.len()).sum()
    }

    fn slots(&self) -> Vec<Slot> {
        let mut out = Vec::with_capacity(self.len());
        for (group, g) in self.groups.iter().enumerate() {
            out.extend((0..g.prompt_len).map(|position| Slot { group, segment: 0, position }));
            for (i, &len) in g.continuation_lens.iter().enumerate() {
                out.extend((0..len).map(|j| Slot { group, segment: i + 1, position: g.prompt_len + j }));
            }
        }
        out
    }

    /// RoPE position of every position of the row.
    pub fn positions(&self) -> Vec<u32> {
        self.slots().iter().map(|s| s.position as u32).collect()
    }

    /// Additive mask [1, 1, T, T]: a query sees the earlier positions of its own group's prompt
    /// and of its own segment, and (with `window`) only those less than `window` RoPE positions
    /// back — the sliding window counted as in the query's own unpacked sequence.
    pub fn mask(&self, window: Option<usize>, dtype: DType, device: &Device) -> Result<Tensor> {
        let slots = self.slots();
        let t = slots.len();
        let mut mask = vec![MASKED; t * t];
        for (q, sq) in slots.iter().enumerate() {
            for (k, sk) in slots.iter().enumerate().take(q + 1) {
                let same_context = sk.group == sq.group && (sk.segment == 0 || sk.segment == sq.segment);
                let in_window = window.is_none_or(|w| sq.position - sk.position < w);
                if same_context && in_window {
                    mask[q * t + k] = 0.0;
                }
            }
        }
        Ok(Tensor::from_vec(mask, (1, 1, t, t), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?)
    }

    /// For each continuation (in row order) and each of the first `width` tokens it predicts,
    /// the row position whose hidden state predicts that token: the prompt's last position for
    /// token 0, the continuation's position j - 1 for token j. A continuation that the row
    /// reads for `len` tokens predicts `len + 1` (its own, then the next). `[n, width]` flattened
    /// row-major; columns past that (padding of the `[n, width]` layout) point at position 0
    /// and must be masked out by the caller.
    pub fn prediction_index(&self, width: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.continuations() * width);
        let mut start = 0;
        for g in &self.groups {
            let prompt_last = start + g.prompt_len - 1;
            let mut at = start + g.prompt_len;
            for &len in &g.continuation_lens {
                for j in 0..width {
                    out.push(match j {
                        0 => prompt_last,
                        j if j <= len => at + j - 1,
                        _ => 0,
                    } as u32);
                }
                at += len;
            }
            start = at;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> (Vec<u32>, PackedRow) {
        let (p, a, b, q, c) = ([1u32, 2, 3], [4u32, 5], [6u32, 7, 8], [9u32, 10], [11u32]);
        PackedRow::pack(&[(&p, vec![&a, &b]), (&q, vec![&c])]).unwrap()
    }

    #[test]
    fn a_row_lays_out_prompts_then_their_continuations() {
        let (ids, row) = row();
        assert_eq!(ids, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!((row.len(), row.continuations()), (11, 3));
        // Continuations continue from their prompt's end; the second group starts again at 0.
        assert_eq!(row.positions(), vec![0, 1, 2, 3, 4, 3, 4, 5, 0, 1, 2]);
        // Token 0 of each continuation is predicted by its prompt's last position, token j by
        // the continuation's position j - 1 (one past what the row reads); padding -> 0.
        assert_eq!(row.prediction_index(4), vec![2, 3, 4, 0, 2, 5, 6, 7, 9, 10, 0, 0]);
    }

    #[test]
    fn continuations_see_their_prompt_and_themselves_only() {
        let (_, row) = row();
        let m = row.mask(None, DType::F32, &Device::Cpu).unwrap().squeeze(0).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        let seen = |q: usize| -> Vec<usize> { (0..11).filter(|&k| m[q][k] == 0.0).collect() };
        assert_eq!(seen(2), vec![0, 1, 2]); // prompt: causal
        assert_eq!(seen(4), vec![0, 1, 2, 3, 4]); // continuation a
        assert_eq!(seen(7), vec![0, 1, 2, 5, 6, 7]); // continuation b: not a
        assert_eq!(seen(10), vec![8, 9, 10]); // second group: not the first
        // A window of 2 RoPE positions: b's token at position 5 sees positions 4 and 5 only.
        let w = row.mask(Some(2), DType::F32, &Device::Cpu).unwrap().squeeze(0).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!((0..11).filter(|&k| w[7][k] == 0.0).collect::<Vec<_>>(), vec![6, 7]);
    }

    #[test]
    fn empty_prompts_are_refused_empty_continuations_predict_from_the_prompt() {
        let empty: [u32; 0] = [];
        assert!(PackedRow::pack(&[(&empty, vec![&[1]])]).is_err());
        assert!(PackedRow::pack(&[(&[1], vec![])]).is_err());
        let (ids, row) = PackedRow::pack(&[(&[1, 2], vec![&empty, &[3]])]).unwrap();
        assert_eq!((ids, row.len()), (vec![1, 2, 3], 3));
        assert_eq!(row.prediction_index(2), vec![1, 0, 1, 2]);
    }

    /// Two groups: a prompt with two continuations, and a short prompt with one.
    fn sequences() -> Vec<(Vec<u32>, Vec<Vec<u32>>)> {
        vec![(vec![5, 9, 13, 2, 7], vec![vec![30, 4, 8], vec![11, 12, 60, 33]]), (vec![3, 4], vec![vec![6, 7, 8]])]
    }

    fn packed(groups: &[(Vec<u32>, Vec<Vec<u32>>)]) -> (Tensor, PackedRow) {
        let refs: Vec<(&[u32], Vec<&[u32]>)> = groups.iter().map(|(p, cs)| (p.as_slice(), cs.iter().map(Vec::as_slice).collect())).collect();
        let (ids, row) = PackedRow::pack(&refs).unwrap();
        (Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap(), row)
    }

    fn alone(prompt: &[u32], continuation: &[u32]) -> (Tensor, Tensor) {
        let seq: Vec<u32> = prompt.iter().chain(continuation).copied().collect();
        let ids = Tensor::new(seq.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        (ids.clone(), ids.ones_like().unwrap())
    }

    fn assert_close(a: &[f64], b: &[f64], what: &str) {
        let scale = b.iter().fold(1e-9f64, |m, v| m.max(v.abs()));
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-9 * scale.max(1.0), "{what}: {x} vs {y}");
        }
    }

    /// Every prompt and continuation position of a packed row has the hidden state it has in
    /// its own unpacked sequence: continuations do not see their siblings or other groups, and
    /// their positions (RoPE, GPT-OSS's sliding window of 3) continue from their prompt.
    #[test]
    fn a_packed_row_gives_each_sequence_its_own_hidden_states() {
        use crate::model::{AdapterMode, CausalLm, ModelConfig};
        for cfg in [ModelConfig::tiny_qwen3(), ModelConfig::tiny_llama(), ModelConfig::tiny_gpt_oss()] {
            let model = CausalLm::random(&cfg, None, 4, DType::F64, &Device::Cpu).unwrap();
            let groups = sequences();
            let (ids, row) = packed(&groups);
            let hidden = model.forward_hidden(&ids, &row, None, AdapterMode::Enabled).unwrap().squeeze(0).unwrap().to_vec2::<f64>().unwrap();
            let mut at = 0;
            for (prompt, continuations) in &groups {
                let mut c_at = at + prompt.len();
                for c in continuations {
                    let (ids1, mask1) = alone(prompt, c);
                    let want = model.forward_hidden(&ids1, &mask1, None, AdapterMode::Enabled).unwrap().squeeze(0).unwrap().to_vec2::<f64>().unwrap();
                    for p in 0..prompt.len() {
                        assert_close(&hidden[at + p], &want[p], &format!("{:?} prompt position {p}", cfg.family));
                    }
                    for j in 0..c.len() {
                        assert_close(&hidden[c_at + j], &want[prompt.len() + j], &format!("{:?} continuation token {j}", cfg.family));
                    }
                    c_at += c.len();
                }
                at = c_at;
            }
        }
    }

    /// The gradient of a loss over the continuations' tokens, through a packed row (gathered
    /// loss positions, bounded backward), equals the sum of the gradients of the same loss over
    /// each sequence alone: the prompt, run once, collects what its copies got.
    #[test]
    fn packed_gradients_equal_the_sum_over_the_sequences() {
        use crate::model::{AdapterMode, CausalLm, LossPositions, MemoryOptions, ModelConfig, token_logprobs};
        let weight = |n: usize, j: usize| (((n * 7 + j) % 5) as f64 - 2.0) * 0.3;
        let groups = sequences();
        let width = groups.iter().flat_map(|(_, cs)| cs.iter().map(Vec::len)).max().unwrap();
        for (cfg, options) in [
            (ModelConfig::tiny_qwen3(), MemoryOptions { activation_checkpointing: true, logits_chunk: 2, ..Default::default() }),
            (ModelConfig::tiny_gpt_oss(), MemoryOptions { activation_checkpointing: false, logits_chunk: 0, ..Default::default() }),
        ] {
            let model = CausalLm::random(&cfg, None, 6, DType::F64, &Device::Cpu).unwrap();
            let params = model.trainable_vars();
            let mut want: Vec<Option<Tensor>> = vec![None; params.len()];
            let mut got: Vec<Option<Tensor>> = vec![None; params.len()];
            let add = |acc: &mut Vec<Option<Tensor>>, store: &candle_core::backprop::GradStore| {
                for ((_, var), slot) in params.iter().zip(acc.iter_mut()) {
                    if let Some(g) = store.get(var.as_tensor()) {
                        *slot = Some(match slot.take() {
                            Some(a) => (a + g).unwrap(),
                            None => g.clone(),
                        });
                    }
                }
            };
            // Each sequence alone.
            let mut n = 0;
            let (mut targets, mut weights) = (Vec::new(), Vec::new());
            for (prompt, continuations) in &groups {
                for c in continuations {
                    let (ids1, mask1) = alone(prompt, c);
                    let hidden = model.forward_hidden(&ids1, &mask1, None, AdapterMode::Enabled).unwrap();
                    let logits = model.logits(&hidden.narrow(1, prompt.len() - 1, c.len()).unwrap(), AdapterMode::Enabled).unwrap();
                    let lp = token_logprobs(&logits, &Tensor::new(c.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap()).unwrap();
                    let w = Tensor::from_vec((0..c.len()).map(|j| weight(n, j)).collect::<Vec<_>>(), (1, c.len()), &Device::Cpu).unwrap();
                    add(&mut want, &(lp * w).unwrap().sum_all().unwrap().backward().unwrap());
                    targets.extend((0..width).map(|j| c.get(j).copied().unwrap_or(0)));
                    weights.extend((0..width).map(|j| if j < c.len() { weight(n, j) } else { 0.0 }));
                    n += 1;
                }
            }
            // The packed row.
            let (ids, row) = packed(&groups);
            let index = Tensor::from_vec(row.prediction_index(width), (n, width), &Device::Cpu).unwrap();
            let targets = Tensor::from_vec(targets, (n, width), &Device::Cpu).unwrap();
            let weights = Tensor::from_vec(weights, (n, width), &Device::Cpu).unwrap();
            model
                .backward_bounded(
                    &ids,
                    &row,
                    AdapterMode::Enabled,
                    LossPositions::Gather(&index),
                    options,
                    |logits, r| {
                        let lp = token_logprobs(logits, &targets.narrow(1, r.start, r.len())?)?;
                        Ok((lp * weights.narrow(1, r.start, r.len())?)?.sum_all()?)
                    },
                    |store, _| {
                        add(&mut got, store);
                        Ok(())
                    },
                )
                .unwrap();
            for ((name, _), (a, b)) in params.iter().zip(want.iter().zip(&got)) {
                let flat =
                    |t: &Option<Tensor>| t.as_ref().unwrap_or_else(|| panic!("{name}: no gradient")).flatten_all().unwrap().to_vec1::<f64>().unwrap();
                assert_close(&flat(b), &flat(a), &format!("{:?} {name}", cfg.family));
            }
        }
    }
}
