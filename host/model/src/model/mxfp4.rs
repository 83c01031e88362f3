//! MXFP4 (OCP microscaling FP4), the format of GPT-OSS's expert weights in the published
//! checkpoints: per row, blocks of 32 values share one power-of-two scale (a u8 exponent biased
//! by 127); each value is a 4-bit E2M1 float, two per byte, element 2j in the low nibble of byte
//! j and 2j+1 in the high one (transformers' `integrations/mxfp4.py`,
//! `convert_moe_packed_tensors`).
//!
//! Dequantisation uses only lookup tables and `index_select` (on CPU and CUDA alike), so the packed bytes can stay on the device and one expert at a time is expanded
//! when a forward pass needs it.

use anyhow::{Result, bail};
use candle_core::{DType, Device, Tensor};

/// E2M1 values by 4-bit code (sign in bit 3).
pub const FP4_VALUES: [f32; 16] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0];

/// Lookup tables on one device: the value of each byte's low nibble, of its high nibble, and the
/// scale 2^(byte - 127) of each exponent byte. Kept by the model so that unpacking an expert
/// does not copy them to the device each time.
#[derive(Clone, Debug)]
pub struct Tables {
    lo: Tensor,
    hi: Tensor,
    exp: Tensor,
}

impl Tables {
    pub fn new(device: &Device) -> Result<Self> {
        let lo: Vec<f32> = (0..256).map(|b| FP4_VALUES[b & 0x0f]).collect();
        let hi: Vec<f32> = (0..256).map(|b| FP4_VALUES[b >> 4]).collect();
        // f32 2^(s-127): s = 255 gives inf (ldexp would keep 0.5 · 2^128 finite); real scales
        // stay far from that end.
        let exp: Vec<f32> = (0..256).map(|s: i32| 2f32.powi(s - 127)).collect();
        Ok(Self { lo: Tensor::new(lo, device)?, hi: Tensor::new(hi, device)?, exp: Tensor::new(exp, device)? })
    }
}

/// blocks [..., G, 16] u8 and scales [..., G] u8 -> values [..., G · 32] in `dtype`.
pub fn dequantize(blocks: &Tensor, scales: &Tensor, dtype: DType) -> Result<Tensor> {
    dequantize_with(&Tables::new(blocks.device())?, blocks, scales, dtype)
}

/// [`dequantize`] with tables made once (on the blocks' device).
pub fn dequantize_with(tables: &Tables, blocks: &Tensor, scales: &Tensor, dtype: DType) -> Result<Tensor> {
    if blocks.dtype() != DType::U8 || scales.dtype() != DType::U8 {
        bail!("MXFP4 blocks and scales must be u8, got {:?} and {:?}", blocks.dtype(), scales.dtype());
    }
    let dims = blocks.dims();
    if dims.len() < 2 || dims[dims.len() - 1] != 16 || scales.dims() != &dims[..dims.len() - 1] {
        bail!("MXFP4 blocks {:?} and scales {:?} do not fit ([..., G, 16] and [..., G])", dims, scales.dims());
    }
    let n_blocks = scales.elem_count();
    let Tables { lo, hi, exp } = tables;
    // As u32: candle's index_select maps the id type's maximum (u8 255) to zero (a padding id).
    let bytes = blocks.flatten_all()?.to_dtype(DType::U32)?;
    // [bytes, 2]: low nibble first, so a row of 16 bytes reads as 32 values in order.
    let values = Tensor::stack(&[lo.index_select(&bytes, 0)?, hi.index_select(&bytes, 0)?], 1)?.reshape((n_blocks, 32))?;
    let scale = exp.index_select(&scales.flatten_all()?.to_dtype(DType::U32)?, 0)?.reshape((n_blocks, 1))?;
    let mut out_dims = dims[..dims.len() - 1].to_vec();
    *out_dims.last_mut().expect("at least one dim") *= 32;
    Ok(values.broadcast_mul(&scale)?.reshape(out_dims)?.to_dtype(dtype)?)
}

/// Packs values [..., n] (n a multiple of 32) to (blocks, scales): per block the smallest
/// power-of-two scale that brings the block's max |v| to at most 6, values rounded to the
/// nearest E2M1. The inverse of [`dequantize`] for values it produces; used by tests.
pub fn quantize(values: &Tensor) -> Result<(Tensor, Tensor)> {
    let dims = values.dims().to_vec();
    let n = *dims.last().unwrap_or(&0);
    if n == 0 || !n.is_multiple_of(32) {
        bail!("MXFP4 packs rows whose length is a multiple of 32, got {dims:?}");
    }
    let v = values.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let (mut blocks, mut scales) = (Vec::with_capacity(v.len() / 2), Vec::with_capacity(v.len() / 32));
    for block in v.chunks(32) {
        let amax = block.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
        let e = (amax / 6.0).log2().ceil().clamp(-127.0, 127.0) as i32;
        scales.push((e + 127) as u8);
        let codes: Vec<u8> = block
            .iter()
            .map(|x| {
                let s = x / 2f32.powi(e);
                let (code, _) = FP4_VALUES[..8].iter().enumerate().fold((0usize, f32::INFINITY), |best, (c, m)| {
                    let d = (s.abs() - m).abs();
                    if d < best.1 { (c, d) } else { best }
                });
                (code + if s < 0.0 && code > 0 { 8 } else { 0 }) as u8
            })
            .collect();
        blocks.extend(codes.chunks(2).map(|p| p[0] | (p[1] << 4)));
    }
    let prefix = &dims[..dims.len() - 1];
    let g = n / 32;
    let mut bdims = prefix.to_vec();
    bdims.extend([g, 16]);
    let mut sdims = prefix.to_vec();
    sdims.push(g);
    let device = values.device();
    Ok((Tensor::from_vec(blocks, bdims, device)?, Tensor::from_vec(scales, sdims, device)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nibbles_and_scales_decode_in_order() {
        // Byte 0x21: low nibble 1 (0.5) first, high nibble 2 (1.0) second; scale 2^(128-127) = 2.
        let mut bytes = vec![0u8; 16];
        bytes[0] = 0x21;
        bytes[15] = 0xf8; // low 8 (-0.0), high 15 (-6.0)
        bytes[14] = 0xff; // 255: candle's index_select would read a u8 255 as padding (0)
        let blocks = Tensor::from_vec(bytes, (1, 16), &Device::Cpu).unwrap();
        let scales = Tensor::from_vec(vec![128u8], 1, &Device::Cpu).unwrap();
        let v = dequantize(&blocks, &scales, DType::F32).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v.len(), 32);
        assert_eq!((v[0], v[1], v[2]), (1.0, 2.0, 0.0));
        assert_eq!((v[28], v[29], v[30], v[31]), (-12.0, -12.0, -0.0, -12.0));
        let err = dequantize(&blocks, &Tensor::zeros(2, DType::U8, &Device::Cpu).unwrap(), DType::F32).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
    }

    #[test]
    fn quantize_then_dequantize_is_close_and_idempotent() {
        let mut rng = crate::rng::SamplerRng::new(3);
        let x: Vec<f32> = (0..4 * 64).map(|_| rng.normal() as f32).collect();
        let x = Tensor::from_vec(x, (4, 64), &Device::Cpu).unwrap();
        let (b, s) = quantize(&x).unwrap();
        assert_eq!((b.dims(), s.dims()), (&[4, 2, 16][..], &[4, 2][..]));
        let y = dequantize(&b, &s, DType::F32).unwrap();
        // E2M1 keeps ~1 significant bit: within a quarter of each block's scale.
        let err = (&x - &y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err < 0.6, "{err}");
        let (b2, s2) = quantize(&y).unwrap();
        let z = dequantize(&b2, &s2, DType::F32).unwrap();
        assert_eq!((&y - &z).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }
}
