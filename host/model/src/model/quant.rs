//! Frozen base weights kept in their GGUF quantisation (the QLoRA idea).
//!
//! Under LoRA — and for inference (eval, the KL reference) — the base weights never change, so
//! they can stay in 8-bit (or the file's 4-bit) blocks: a decode step then reads ~1 byte per
//! weight instead of 4. On a CPU with AVX-512 VNNI a Q8_0 weight goes through our integer kernel
//! ([`super::q8_gemm`], every row count: decoding and prefill); elsewhere candle's quantised CPU
//! kernels (block dot products as in llama.cpp) do the matmul. Only the adapters train, and they need the gradient *through* the base
//! (dL/dx = dL/dy · W): [`QuantMatmul`] is a custom op whose backward multiplies by the
//! dequantised weight. That is the exact gradient of the dequantised model (a straight-through
//! estimate over the kernels' 8-bit activations, whose rounding has no useful derivative); the
//! model tests compare it with a dense twin whose gradients are checked by finite differences.
//! Full fine-tuning dequantises. Quantised decoding is deterministic for a batch layout but not
//! bit-identical across paddings: a 1e-6 summation difference can move an activation across a
//! rounding step (BENCHMARKS.md, "Decoding against llama.cpp").

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use serde::{Deserialize, Serialize};

use super::q8_gemm::{self, PackedQ8};

/// What happens to quantised (GGUF) base weights at load time: `model.base_quant` in a run
/// config. Only frozen weights can stay quantised; a trained weight is always dequantised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseQuant {
    /// The default: a quantised file's frozen weights become Q8_0 (as `q8_0`), a dense file's
    /// stay dense (a safetensors checkpoint trains under LoRA exactly as stored).
    #[default]
    Auto,
    /// Frozen linear weights (and a tied head's projection) stay in the file's quantisation.
    /// Dense files stay dense. Fast where candle has kernels for the file's type (Q4_0, Q8_0 and
    /// the K-quants on CPU; Q4_1 falls back to scalar code on CPU).
    Keep,
    /// Frozen linear weights become Q8_0 whatever the source (a GGUF type, or dense safetensors):
    /// 8.5 bits per weight, AVX-512 VNNI (else AVX2) kernels on CPU, and the smallest loss
    /// against the source.
    #[serde(rename = "q8_0")]
    Q8_0,
    /// Every weight becomes a dense tensor of the model dtype (the exact pre-quantisation path).
    Dequantize,
}

impl FromStr for BaseQuant {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "keep" => Ok(Self::Keep),
            "q8_0" => Ok(Self::Q8_0),
            "dequantize" => Ok(Self::Dequantize),
            other => bail!("base_quant must be \"auto\", \"keep\", \"q8_0\" or \"dequantize\", got {other:?}"),
        }
    }
}

/// From this many input rows on, [`QuantMatmul::forward`] multiplies by the dequantised weight.
const DENSE_ROWS: usize = 32;

/// `x [rows, in] -> x Wᵀ [rows, out]` with W [out, in] quantised. Differentiable in `x` only
/// (W is frozen): the backward pass dequantises W for `grad · W`, which costs one dense copy of
/// this one weight for the length of the op, never the whole model.
#[derive(Clone)]
pub struct QuantMatmul {
    weight: Arc<Stored>,
}

/// How a quantised weight is held: one copy only, in the layout its kernel reads.
enum Stored {
    /// GGUF blocks, multiplied by candle's kernels (any block type, any device).
    Blocks(QTensor),
    /// A Q8_0 weight on a CPU with AVX-512 VNNI, repacked for [`q8_gemm`].
    Packed(PackedQ8),
}

impl QuantMatmul {
    /// Takes a 2-D quantised weight; a Q8_0 one on a CPU with AVX-512 VNNI is repacked for
    /// [`q8_gemm`] (the blocks are not kept: the repacked copy is the only one).
    pub fn new(weight: QTensor) -> Result<Self> {
        if weight.rank() != 2 {
            bail!("a quantised linear weight must be 2-D, got {:?}", weight.shape());
        }
        let stored = if weight.dtype() == GgmlDType::Q8_0 && weight.device().is_cpu() && q8_gemm::available() {
            let (n, k) = weight.shape().dims2()?;
            Stored::Packed(PackedQ8::from_q8_0_bytes(&weight.data()?, n, k)?)
        } else {
            Stored::Blocks(weight)
        };
        Ok(Self { weight: Arc::new(stored) })
    }

    /// [out, in]
    pub fn dims(&self) -> (usize, usize) {
        match &*self.weight {
            Stored::Blocks(q) => {
                let d = q.shape().dims();
                (d[0], d[1])
            }
            Stored::Packed(p) => p.dims(),
        }
    }

    /// The weight's block type.
    pub fn dtype(&self) -> GgmlDType {
        match &*self.weight {
            Stored::Blocks(q) => q.dtype(),
            Stored::Packed(_) => GgmlDType::Q8_0,
        }
    }

    /// Where the weight lives.
    pub fn device(&self) -> Device {
        match &*self.weight {
            Stored::Blocks(q) => q.device(),
            Stored::Packed(_) => Device::Cpu,
        }
    }

    /// The weight as a dense f32 tensor on `device`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        Ok(match &*self.weight {
            Stored::Blocks(q) => q.dequantize(device)?,
            Stored::Packed(p) => Tensor::from_vec(p.dequantize(), p.dims(), &Device::Cpu)?.to_device(device)?,
        })
    }

    /// x [rows, in] (contiguous) -> [rows, out].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let op = || Arc::new(Box::new(self.clone()) as Box<dyn CustomOp1 + Send + Sync>);
        if let Stored::Packed(_) = &*self.weight {
            // Our VNNI kernel for every row count (it beats the dense GEMM even for prefill:
            // BENCHMARKS.md, "Decoding against llama.cpp"); it reads f32 rows.
            return Ok(match x.dtype() {
                DType::F32 => x.contiguous()?.apply_op1_arc(op())?,
                other => x.to_dtype(DType::F32)?.contiguous()?.apply_op1_arc(op())?.to_dtype(other)?,
            });
        }
        // candle's kernels: many rows (a prefill, a training micro-batch) are compute-bound, and
        // there the dense GEMM on the weight dequantised for this call beats candle's block
        // kernels (whose AVX2 dot products take one row at a time), and it is exact. Few rows
        // (decoding) are bound by reading the weight, which the blocks keep small.
        if x.dim(0)? >= DENSE_ROWS && x.device().is_cpu() {
            let w = self.dequantize(x.device())?.to_dtype(x.dtype())?;
            return Ok(x.matmul(&w.t()?)?);
        }
        Ok(x.contiguous()?.apply_op1_arc(op())?)
    }
}

impl CustomOp1 for QuantMatmul {
    fn name(&self) -> &'static str {
        "quant-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        match &*self.weight {
            Stored::Blocks(q) => q.cpu_fwd(storage, layout),
            Stored::Packed(packed) => {
                let (CpuStorage::F32(values), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
                    candle_core::bail!("quant-matmul: the Q8_0 kernel takes contiguous f32 rows, got {layout:?}");
                };
                let (n, k) = packed.dims();
                let mut dims = layout.dims().to_vec();
                if dims.last() != Some(&k) {
                    candle_core::bail!("quant-matmul: input {:?} does not end in the weight's width {k}", layout.dims());
                }
                let rows = (end - start) / k;
                let out = packed.matmul(&values[start..end], rows).map_err(candle_core::Error::wrap)?;
                *dims.last_mut().unwrap() = n;
                Ok((CpuStorage::F32(out), Shape::from(dims)))
            }
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &candle_core::CudaStorage, layout: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        match &*self.weight {
            Stored::Blocks(q) => q.cuda_fwd(storage, layout),
            Stored::Packed(_) => candle_core::bail!("quant-matmul: a weight repacked for the CPU kernel cannot run on a GPU"),
        }
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let w = self.dequantize(arg.device()).map_err(candle_core::Error::wrap)?.to_dtype(grad_res.dtype())?;
        Ok(Some(grad_res.matmul(&w)?))
    }
}

/// Whether `name` (HF naming) is a weight [`BaseQuant`] may keep quantised: the linear layers,
/// a separate head, and the embeddings (whose quantised copy serves a tied head).
pub fn quantizable(name: &str) -> bool {
    name.ends_with("_proj.weight") || name == "lm_head.weight" || name == "model.embed_tokens.weight"
}

/// Applies `mode` to a model's weights as loaded: `dense` tensors and `quantized` ones (a GGUF
/// file's block types, on the CPU). `frozen` says whether the base is frozen (LoRA, or
/// inference); a trained base is always dense. Returns the (dense, quantised) split the model
/// is built from, the quantised tensors on `device`.
pub fn apply_base_quant(
    mode: BaseQuant,
    frozen: bool,
    mut dense: HashMap<String, Tensor>,
    quantized: HashMap<String, QTensor>,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, HashMap<String, QTensor>)> {
    let mut kept = HashMap::new();
    let mut requantize = Vec::new();
    for (name, q) in quantized {
        let keep = frozen
            && match mode {
                BaseQuant::Keep => true,
                BaseQuant::Auto | BaseQuant::Q8_0 => q.dtype() == GgmlDType::Q8_0,
                BaseQuant::Dequantize => false,
            };
        if keep {
            kept.insert(name, q);
        } else {
            let t = q.dequantize(&Device::Cpu).with_context(|| format!("dequantizing {name}"))?;
            requantize.push(name.clone());
            dense.insert(name, t);
        }
    }
    // Dense weights: the file's own dense ones (explicit q8_0), and quantised ones that were not
    // kept (auto/q8_0 re-quantise them rather than leave them f32).
    let requantize: Vec<String> = match mode {
        BaseQuant::Q8_0 if frozen => dense.keys().filter(|n| quantizable(n)).cloned().collect(),
        BaseQuant::Auto if frozen => requantize,
        _ => Vec::new(),
    };
    for name in requantize {
        let t = &dense[&name];
        // Q8_0 blocks run along a row of 32 values.
        if t.rank() != 2 || t.dim(1)? % GgmlDType::Q8_0.block_size() != 0 {
            continue;
        }
        let q = QTensor::quantize(&t.to_dtype(DType::F32)?, GgmlDType::Q8_0).with_context(|| format!("quantising {name} to Q8_0"))?;
        dense.remove(&name);
        kept.insert(name, q);
    }
    let kept = kept.into_iter().map(|(name, q)| Ok((name, qtensor_to_device(q, device)?))).collect::<Result<_>>()?;
    Ok((dense, kept))
}

/// A CPU-loaded quantised tensor on `device`.
fn qtensor_to_device(q: QTensor, device: &Device) -> Result<QTensor> {
    if device.is_cpu() {
        return Ok(q);
    }
    let storage = QStorage::from_data(q.data()?, device, q.dtype())?;
    Ok(QTensor::new(storage, q.shape().clone())?)
}

/// Reorders the rows of a quantised [rows, cols] weight: row `i` of the result is row `order[i]`
/// of `w`. Quantisation blocks run along a row, so whole rows move as bytes, unchanged.
pub fn permute_rows(w: &QTensor, order: &[usize]) -> Result<QTensor> {
    let (rows, cols) = w.shape().dims2()?;
    if order.len() != rows {
        bail!("row order has {} entries for {rows} rows", order.len());
    }
    let dtype = w.dtype();
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let data = w.data()?;
    let mut out = Vec::with_capacity(data.len());
    for &r in order {
        out.extend_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
    }
    let storage = QStorage::from_data(std::borrow::Cow::Owned(out), &w.device(), dtype)?;
    Ok(QTensor::new(storage, (rows, cols))?)
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::rng::SamplerRng;

    fn random(rows: usize, cols: usize, seed: u64) -> Tensor {
        let mut rng = SamplerRng::new(seed);
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32 * 0.5).collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn forward_matches_the_dequantised_weight_and_backward_is_exact() {
        // 3 rows take the block kernels (8-bit activations: close), 40 the dense GEMM (exact).
        for (dtype, rows, tolerance) in [(GgmlDType::Q8_0, 3, 0.02), (GgmlDType::Q4_1, 3, 0.02), (GgmlDType::Q4_1, 40, 1e-5)] {
            let w = QTensor::quantize(&random(24, 64, 1), dtype).unwrap();
            let op = QuantMatmul::new(w).unwrap();
            let dense = op.dequantize(&Device::Cpu).unwrap();
            let x = Var::from_tensor(&random(rows, 64, 2)).unwrap();
            let y = op.forward(x.as_tensor()).unwrap();
            let want = x.as_tensor().matmul(&dense.t().unwrap()).unwrap();
            let err = (&y - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(err < tolerance * scale, "{dtype:?}, {rows} rows: forward error {err} (scale {scale})");
            // d(sum(y * c))/dx = c · W: exact, through the dequantised weight.
            let c = random(rows, 24, 3);
            let loss = (y * &c).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let gx = grads.get(x.as_tensor()).unwrap();
            let want_gx = c.matmul(&dense).unwrap();
            let gerr = (gx - want_gx).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(gerr < 1e-5, "{dtype:?}, {rows} rows: gradient error {gerr}");
        }
    }

    #[test]
    fn permuting_rows_moves_whole_quantised_rows() {
        let w = QTensor::quantize(&random(4, 64, 5), GgmlDType::Q4_0).unwrap();
        let p = permute_rows(&w, &[2, 0, 3, 1]).unwrap();
        let (a, b) = (w.dequantize(&Device::Cpu).unwrap(), p.dequantize(&Device::Cpu).unwrap());
        for (i, &r) in [2usize, 0, 3, 1].iter().enumerate() {
            assert_eq!(b.get(i).unwrap().to_vec1::<f32>().unwrap(), a.get(r).unwrap().to_vec1::<f32>().unwrap());
        }
        assert!(permute_rows(&w, &[0, 1]).is_err());
    }

    #[test]
    fn base_quant_parses_its_four_values_only() {
        assert_eq!("keep".parse::<BaseQuant>().unwrap(), BaseQuant::Keep);
        assert_eq!("auto".parse::<BaseQuant>().unwrap(), BaseQuant::Auto);
        assert_eq!("dequantize".parse::<BaseQuant>().unwrap(), BaseQuant::Dequantize);
        assert_eq!("q8_0".parse::<BaseQuant>().unwrap(), BaseQuant::Q8_0);
        assert_eq!(serde_json::to_string(&BaseQuant::Q8_0).unwrap(), "\"q8_0\"");
        assert!("q4".parse::<BaseQuant>().unwrap_err().to_string().contains("\"q4\""));
    }
}
