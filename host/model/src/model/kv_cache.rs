//! Per-layer key/value cache for incremental decoding, written in place.
//!
//! Each layer owns two preallocated buffers [B, num_kv_heads, capacity, head_dim]; a decode step
//! writes its one new position into them (`slice_set`) and attention reads a view of the first
//! `len` positions. Appending by concatenation instead copies the whole cache at every token
//! (quadratic in the completion length). When a buffer is full it doubles. Cached tensors are
//! detached: the cache serves rollouts, which need no gradients, and keeping the graph alive
//! across decode steps would hold every step's activations in memory.

use anyhow::{Result, bail};
use candle_core::Tensor;

#[derive(Debug)]
struct LayerCache {
    /// [B, num_kv_heads, capacity, head_dim]
    k: Tensor,
    v: Tensor,
}

/// Not `Clone`: a clone would share the buffers that `append` writes in place.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    /// Positions written (padding included); the same for every layer between forwards.
    len: usize,
    /// Positions to allocate at the first write (grows by doubling past it).
    reserve: usize,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self::with_capacity(num_layers, 0)
    }

    /// A cache that allocates room for `positions` positions at its first write, so a decode of
    /// known length (prompt + max new tokens) never reallocates.
    pub fn with_capacity(num_layers: usize, positions: usize) -> Self {
        Self { layers: (0..num_layers).map(|_| None).collect(), len: 0, reserve: positions }
    }

    /// Number of cached positions (padding included).
    pub fn seq_len(&self) -> usize {
        self.len
    }

    /// Batch rows currently cached (0 when empty).
    pub fn batch_size(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map(|c| c.k.dims()[0]).unwrap_or(0)
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn clear(&mut self) {
        for l in &mut self.layers {
            *l = None;
        }
        self.len = 0;
    }

    /// Keep only the batch rows `rows` (in that order, repeats allowed): drops finished
    /// sequences during sampling, or copies a prompt's rows for its G completions.
    pub fn select_rows(&mut self, rows: &[u32]) -> Result<()> {
        let Some(dev) = self.layers.first().and_then(|l| l.as_ref()).map(|c| c.k.device().clone()) else {
            return Ok(());
        };
        let idx = Tensor::new(rows, &dev)?;
        for c in self.layers.iter_mut().flatten() {
            c.k = c.k.index_select(&idx, 0)?;
            c.v = c.v.index_select(&idx, 0)?;
        }
        Ok(())
    }

    /// Write this step's k/v [B, kv_heads, T, head_dim] for `layer` after the cached positions
    /// and return views of all of them (cached + new), [B, kv_heads, len + T, head_dim]. The
    /// caller's layers append in turn; the length advances when the last layer has written.
    pub(crate) fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let num_layers = self.layers.len();
        let (past, reserve) = (self.len, self.reserve);
        let Some(slot) = self.layers.get_mut(layer) else {
            bail!("kv cache has {num_layers} layers, the model asked for layer {layer}");
        };
        let (b, heads, t, hd) = k.dims4()?;
        let needed = past + t;
        let cache = match slot.take() {
            None => {
                let cap = needed.max(reserve);
                let k_buf = Tensor::zeros((b, heads, cap, hd), k.dtype(), k.device())?;
                let v_buf = Tensor::zeros((b, heads, cap, hd), v.dtype(), v.device())?;
                LayerCache { k: k_buf, v: v_buf }
            }
            Some(c) if c.k.dims()[0] != b => bail!("kv cache holds {} rows, this step has {b}", c.k.dims()[0]),
            Some(c) if c.k.dims()[2] < needed => {
                // Full: double (or fit the step), keeping the written positions.
                let cap = needed.max(2 * c.k.dims()[2]);
                let grow = |buf: &Tensor| -> Result<Tensor> {
                    let new = Tensor::zeros((b, heads, cap, hd), buf.dtype(), buf.device())?;
                    new.slice_set(&buf.narrow(2, 0, past)?.contiguous()?, 2, 0)?;
                    Ok(new)
                };
                LayerCache { k: grow(&c.k)?, v: grow(&c.v)? }
            }
            Some(c) => c,
        };
        cache.k.slice_set(&k.detach().contiguous()?, 2, past)?;
        cache.v.slice_set(&v.detach().contiguous()?, 2, past)?;
        let views = (cache.k.narrow(2, 0, needed)?, cache.v.narrow(2, 0, needed)?);
        *slot = Some(cache);
        if layer + 1 == num_layers {
            self.len = needed;
        }
        Ok(views)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    fn step(start: f32, t: usize) -> Tensor {
        let n = 2 * t * 4;
        Tensor::arange(start, start + n as f32, &Device::Cpu).unwrap().reshape((1, 2, t, 4)).unwrap()
    }

    #[test]
    fn appends_in_place_grow_past_the_reserve_and_keep_every_position() {
        let mut cache = KvCache::with_capacity(2, 3);
        let mut want: Vec<Tensor> = Vec::new();
        for (i, t) in [2usize, 1, 1, 3, 1].into_iter().enumerate() {
            let k = step(100.0 * i as f32, t);
            want.push(k.clone());
            let mut last = None;
            for layer in 0..2 {
                last = Some(cache.append(layer, &k, &(&k * 2.0).unwrap()).unwrap());
            }
            let (k_all, v_all) = last.unwrap();
            let expect = Tensor::cat(&want.iter().collect::<Vec<_>>(), 2).unwrap();
            assert_eq!(k_all.flatten_all().unwrap().to_vec1::<f32>().unwrap(), expect.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            assert_eq!(
                v_all.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                (expect * 2.0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
            assert_eq!(cache.seq_len(), want.iter().map(|w| w.dims()[2]).sum::<usize>());
        }
        assert_eq!(cache.seq_len(), 8);
        cache.clear();
        assert_eq!((cache.seq_len(), cache.batch_size()), (0, 0));
    }

    #[test]
    fn selecting_rows_copies_and_drops_batch_rows() {
        let mut cache = KvCache::with_capacity(1, 8);
        let k = Tensor::arange(0f32, 16.0, &Device::Cpu).unwrap().reshape((2, 1, 2, 4)).unwrap();
        cache.append(0, &k, &k).unwrap();
        cache.select_rows(&[1, 1, 0]).unwrap();
        assert_eq!(cache.batch_size(), 3);
        let next = Tensor::zeros((3, 1, 1, 4), DType::F32, &Device::Cpu).unwrap();
        let (k_all, _) = cache.append(0, &next, &next).unwrap();
        let rows = k_all.narrow(2, 0, 2).unwrap().contiguous().unwrap().reshape((3, 8)).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(rows[0], rows[1]);
        assert_eq!(rows[0][0], 8.0);
        assert_eq!(rows[2][0], 0.0);
        let wrong = Tensor::zeros((2, 1, 1, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(cache.append(0, &wrong, &wrong).unwrap_err().to_string().contains("holds 3 rows"));
    }
}
