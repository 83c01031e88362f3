//! Per-layer key/value cache for incremental decoding.
//!
//! Cached tensors are stored detached: the cache serves rollouts, which need no gradients, and
//! keeping the graph alive across decode steps would hold every step's activations in memory.

use anyhow::{Result, bail};
use candle_core::Tensor;

#[derive(Clone, Debug, Default)]
pub struct KvCache {
    /// Per layer: (k, v), each [B, num_kv_heads, S, head_dim] (before GQA repetition).
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![None; num_layers] }
    }

    /// Number of cached positions (padding included).
    pub fn seq_len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map(|(k, _)| k.dims()[2]).unwrap_or(0)
    }

    /// Batch rows currently cached (0 when empty).
    pub fn batch_size(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map(|(k, _)| k.dims()[0]).unwrap_or(0)
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn clear(&mut self) {
        for l in &mut self.layers {
            *l = None;
        }
    }

    /// Keep only the batch rows `rows` (in that order): drops finished sequences during sampling.
    pub fn select_rows(&mut self, rows: &[u32]) -> Result<()> {
        let Some(dev) = self.layers.first().and_then(|l| l.as_ref()).map(|(k, _)| k.device().clone()) else {
            return Ok(());
        };
        let idx = Tensor::new(rows, &dev)?;
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(&idx, 0)?;
            *v = v.index_select(&idx, 0)?;
        }
        Ok(())
    }

    /// Append this step's k/v for `layer` and return the full (cached + new) k/v.
    pub(crate) fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let Some(slot) = self.layers.get_mut(layer) else {
            bail!("kv cache has {} layers, the model asked for layer {layer}", self.layers.len());
        };
        let (k_all, v_all) = match slot.take() {
            None => (k.clone(), v.clone()),
            Some((pk, pv)) => (Tensor::cat(&[&pk, k], 2)?, Tensor::cat(&[&pv, v], 2)?),
        };
        *slot = Some((k_all.detach(), v_all.detach()));
        Ok((k_all, v_all))
    }
}
