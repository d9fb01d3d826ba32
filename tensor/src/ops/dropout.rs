//! Dropout (inverted, as torch.nn.functional.dropout in training): `out = keep ? x / (1 - p) : 0`
//! with a u8 keep mask of the input's shape, returned for the backward. The mask is drawn from the
//! Philox stream exactly as `Tensor::bernoulli(shape, p)` draws it, negated: element `i` (row-major)
//! is kept iff uniform word `i` of the draw is `>= p` (compared in f32), so a GPU kernel
//! reproduces it bit for bit. Outputs are contiguous. The kernels are the two small slice loops
//! below (mask draw, masked scale).

use crate::rng::Rng;
use crate::{CpuStorage, DType, Error, Float, Result, Storage, Tensor};
use rayon::prelude::*;
use std::ops::Range;

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// The keep mask of a draw of `n` elements at block `offset`: 1 iff uniform element `i >= p`.
fn keep_mask(seed: u64, offset: u64, n: usize, p: f32) -> Vec<u8> {
    crate::rng::uniform_mask(seed, offset, n, p, 0)
}

/// `keep[i] != 0 ? x[i] * scale : 0`. A dropped element is an exact zero whatever `x` holds.
fn masked_scale<T: Float>(x: &[T], keep: &[u8], scale: T) -> Vec<T> {
    let mut out = vec![T::ZERO; x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .zip(keep.par_chunks(CHUNK))
        .for_each(|((o, x), k)| {
            for ((o, &x), &k) in o.iter_mut().zip(x).zip(k) {
                *o = if k != 0 { x * scale } else { T::ZERO };
            }
        });
    out
}

pub(crate) fn check_p(op: &'static str, p: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::op(op, format!("p must be in [0, 1], got {p}")));
    }
    Ok(())
}

/// `x * keep / (1 - p)` over tensors of one shape; `x` float, `keep` u8. The scale `1 / (1 - p)`
/// is computed in f64 and rounded to the compute type (f32 for f32/f16/bf16, f64 for f64), as
/// torch does; p = 1 gives zeros.
fn apply_mask(op: &'static str, x: &Tensor, keep: &Tensor, p: f64) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda::any_on_cuda(&[x, keep]) {
        return crate::cuda::dropout::dropout_apply(op, x, keep, p);
    }
    if x.dtype() == DType::F16 || x.dtype() == DType::BF16 {
        return apply_mask(op, &x.to_dtype(DType::F32)?, keep, p)?.to_dtype(x.dtype());
    }
    let scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
    let (x, keep) = (x.contiguous()?, keep.contiguous()?);
    let xr = x.layout().contiguous_range().expect("contiguous");
    let kr = keep.layout().contiguous_range().expect("contiguous");
    fn typed<T: Float>(
        op: &'static str,
        xs: &CpuStorage,
        xr: Range<usize>,
        k: &[u8],
        scale: f64,
    ) -> Result<CpuStorage> {
        let x = &xs.as_slice::<T>(op)?[xr];
        Ok(CpuStorage::from_vec(masked_scale(x, k, T::from_f64(scale))))
    }
    // The CUDA path returned above, so both storages are on the CPU here.
    let (xs, k) = (
        x.cpu_storage(op)?,
        &keep.cpu_storage(op)?.as_slice::<u8>(op)?[kr],
    );
    let out = match x.dtype() {
        DType::F32 => typed::<f32>(op, xs, xr, k, scale)?,
        DType::F64 => typed::<f64>(op, xs, xr, k, scale)?,
        dtype => return Err(Error::UnsupportedDType { op, dtype }),
    };
    Ok(Tensor::from_cpu(out, x.shape()))
}

impl Tensor {
    /// Inverted dropout with drop probability `p`: returns `(out, keep_mask)`. p = 0 returns the
    /// input itself and an all-ones mask without drawing from `rng`; otherwise `n` uniform words
    /// are drawn (4 per Philox block), as `Tensor::bernoulli` does.
    pub fn dropout(&self, p: f64, rng: &mut Rng) -> Result<(Tensor, Tensor)> {
        const OP: &str = "dropout";
        check_p(OP, p)?;
        if !self.dtype().is_float() {
            return Err(Error::UnsupportedDType {
                op: OP,
                dtype: self.dtype(),
            });
        }
        let _p = crate::profiler::scope(OP);
        if p == 0.0 {
            return Ok((
                self.clone(),
                Tensor::ones(self.shape(), DType::U8, self.device())?,
            ));
        }
        let n = self.elem_count();
        let (seed, offset) = (rng.seed, rng.reserve(n, 4));
        let keep = match self.storage() {
            Storage::Cpu(_) => {
                Tensor::from_vec(keep_mask(seed, offset, n, p as f32), self.shape())?
            }
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => return crate::cuda::dropout::dropout(self, p, (seed, offset)),
        };
        Ok((apply_mask(OP, self, &keep, p)?, keep))
    }

    /// `dropout(self) + residual` for tensors of one shape, of one dtype or (autocast's residual
    /// branch) `self` f16/bf16 and `residual` f32: returns `(out, keep_mask)`, `out` of the
    /// residual's dtype, drawing from `rng` exactly as `dropout` does. On the CPU it is those ops
    /// (the half dropout cast to f32 before the add when the dtypes differ); on CUDA one kernel
    /// that rounds the dropped value to `self`'s dtype before the add, so both give the same
    /// bits.
    pub fn dropout_add(
        &self,
        residual: &Tensor,
        p: f64,
        rng: &mut Rng,
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "dropout_add";
        check_p(OP, p)?;
        if self.shape() != residual.shape() {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().to_vec(),
                rhs: residual.shape().to_vec(),
            });
        }
        let mixed =
            matches!(self.dtype(), DType::F16 | DType::BF16) && residual.dtype() == DType::F32;
        if self.dtype() != residual.dtype() && !mixed {
            return Err(Error::DTypeMismatch {
                op: OP,
                expected: self.dtype(),
                got: residual.dtype(),
            });
        }
        #[cfg(feature = "cuda")]
        if p > 0.0 && self.dtype().is_float() && crate::cuda::any_on_cuda(&[self, residual]) {
            let _p = crate::profiler::scope(OP);
            let (seed, offset) = (rng.seed, rng.reserve(self.elem_count(), 4));
            return crate::cuda::dropout::dropout_add(OP, self, residual, p, (seed, offset));
        }
        let (y, keep) = self.dropout(p, rng)?;
        Ok((y.to_dtype(residual.dtype())?.add(residual)?, keep))
    }

    /// The gradient of `dropout`: `dy * keep / (1 - p)`.
    pub fn dropout_backward(dy: &Tensor, keep_mask: &Tensor, p: f64) -> Result<Tensor> {
        const OP: &str = "dropout_backward";
        check_p(OP, p)?;
        if !dy.dtype().is_float() {
            return Err(Error::UnsupportedDType {
                op: OP,
                dtype: dy.dtype(),
            });
        }
        if keep_mask.dtype() != DType::U8 {
            return Err(Error::DTypeMismatch {
                op: OP,
                expected: DType::U8,
                got: keep_mask.dtype(),
            });
        }
        if dy.shape() != keep_mask.shape() {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: dy.shape().to_vec(),
                rhs: keep_mask.shape().to_vec(),
            });
        }
        let _p = crate::profiler::scope(OP);
        apply_mask(OP, dy, keep_mask, p)
    }

    /// [`Tensor::dropout_backward`] with the result in `dtype`: dy's dtype, or f16/bf16 from an
    /// f32 `dy` (the gradient of a half branch of [`Tensor::dropout_add`]), computed in f32 and
    /// rounded once (one kernel on CUDA; on the CPU the f32 result cast).
    pub fn dropout_backward_to(
        dy: &Tensor,
        keep_mask: &Tensor,
        p: f64,
        dtype: DType,
    ) -> Result<Tensor> {
        const OP: &str = "dropout_backward";
        if dtype == dy.dtype() {
            return Tensor::dropout_backward(dy, keep_mask, p);
        }
        if dy.dtype() != DType::F32 || !matches!(dtype, DType::F16 | DType::BF16) {
            crate::bail!(
                OP,
                "no backward from a {} gradient into {dtype}",
                dy.dtype()
            );
        }
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[dy, keep_mask]) {
            check_p(OP, p)?;
            if dy.shape() != keep_mask.shape() || keep_mask.dtype() != DType::U8 {
                crate::bail!(
                    OP,
                    "mask {} {:?} does not fit the gradient {:?}",
                    keep_mask.dtype(),
                    keep_mask.shape(),
                    dy.shape()
                );
            }
            let _p = crate::profiler::scope(OP);
            return crate::cuda::dropout::dropout_apply_to(OP, dy, keep_mask, p, dtype);
        }
        Tensor::dropout_backward(dy, keep_mask, p)?.to_dtype(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;

    fn rand(shape: &[usize], rng: &mut Rng) -> Tensor {
        Tensor::randn(shape, 0.0, 1.0, DType::F32, Device::Cpu, rng).unwrap()
    }

    #[test]
    fn mask_is_the_complement_of_bernoulli_and_out_is_scaled() {
        let mut rng = Rng::new(3);
        // A transposed view: the mask follows the logical row-major order.
        let x = rand(&[37, 29], &mut rng).t().unwrap();
        for p in [0.1, 0.5, 0.9] {
            let mut r1 = Rng::new(17);
            r1.offset = 5;
            let mut r2 = r1;
            let (out, keep) = x.dropout(p, &mut r1).unwrap();
            let b = Tensor::bernoulli(x.shape(), p, Device::Cpu, &mut r2).unwrap();
            assert_eq!(r1, r2, "same rng consumption");
            assert_eq!((keep.dtype(), keep.shape()), (DType::U8, x.shape()));
            let (k, bv) = (keep.to_vec::<u8>().unwrap(), b.to_vec::<u8>().unwrap());
            assert!(k.iter().zip(&bv).all(|(&k, &b)| k == 1 - b));
            let scale = (1.0 / (1.0 - p)) as f32;
            // The reference: kept elements scaled, dropped ones exactly 0.
            let masked = |t: &Tensor| -> Vec<f32> {
                let v = t.to_vec::<f32>().unwrap();
                v.iter()
                    .zip(&k)
                    .map(|(&x, &k)| if k == 1 { x * scale } else { 0.0 })
                    .collect()
            };
            assert_eq!(out.to_vec::<f32>().unwrap(), masked(&x));
            // Backward: same formula on dy.
            let dy = rand(x.shape(), &mut rng);
            let dx = Tensor::dropout_backward(&dy, &keep, p).unwrap();
            assert_eq!(dx.to_vec::<f32>().unwrap(), masked(&dy));
        }
    }

    #[test]
    fn drop_rate_and_mean_are_preserved() {
        let x = Tensor::ones(&[200_000], DType::F64, Device::Cpu).unwrap();
        for p in [0.1, 0.3] {
            let (out, keep) = x.dropout(p, &mut Rng::new(8)).unwrap();
            let kept = keep
                .to_vec::<u8>()
                .unwrap()
                .iter()
                .filter(|&&k| k == 1)
                .count();
            let rate = 1.0 - kept as f64 / 2e5;
            assert!((rate - p).abs() < 0.004, "p {p} rate {rate}");
            let mean = out.to_vec::<f64>().unwrap().iter().sum::<f64>() / 2e5;
            assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        }
    }

    #[test]
    fn edge_probabilities_dtypes_and_sizes() {
        let mut rng = Rng::new(1);
        let x = rand(&[4, 5], &mut rng);
        let before = rng;
        let (out, keep) = x.dropout(0.0, &mut rng).unwrap();
        assert_eq!(rng, before, "p = 0 draws nothing");
        assert!(out.same_storage(&x));
        assert!(keep.to_vec::<u8>().unwrap().iter().all(|&k| k == 1));
        let (out, keep) = x.dropout(1.0, &mut rng).unwrap();
        assert!(out.to_vec::<f32>().unwrap().iter().all(|&v| v == 0.0));
        assert!(keep.to_vec::<u8>().unwrap().iter().all(|&k| k == 0));
        // Half types compute in f32 and round back.
        for dt in [DType::F16, DType::BF16] {
            let xh = x.to_dtype(dt).unwrap();
            let (oh, kh) = xh.dropout(0.25, &mut Rng::new(2)).unwrap();
            let (of, kf) = xh
                .to_dtype(DType::F32)
                .unwrap()
                .dropout(0.25, &mut Rng::new(2))
                .unwrap();
            assert_eq!(oh.dtype(), dt);
            assert_eq!(kh.to_vec::<u8>().unwrap(), kf.to_vec::<u8>().unwrap());
            assert_eq!(
                oh.to_vec_f64().unwrap(),
                of.to_dtype(dt).unwrap().to_vec_f64().unwrap()
            );
        }
        // Zero-size and size-1 dims.
        let e = Tensor::zeros(&[3, 0, 2], DType::F32, Device::Cpu).unwrap();
        let (o, k) = e.dropout(0.5, &mut rng).unwrap();
        assert_eq!((o.shape(), k.shape()), (&[3, 0, 2][..], &[3, 0, 2][..]));
        let one = rand(&[1, 1], &mut rng);
        assert_eq!(one.dropout(0.5, &mut rng).unwrap().0.shape(), &[1, 1]);
    }

    #[test]
    fn errors_name_the_op() {
        let x = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
        let mut rng = Rng::new(0);
        for p in [-0.1, 1.5, f64::NAN] {
            let e = x.dropout(p, &mut rng).unwrap_err().to_string();
            assert!(e.starts_with("dropout:"), "{e}");
        }
        let i = Tensor::zeros(&[2], DType::I64, Device::Cpu).unwrap();
        assert!(i
            .dropout(0.5, &mut rng)
            .unwrap_err()
            .to_string()
            .starts_with("dropout:"));
        let bad = Tensor::ones(&[3, 2], DType::U8, Device::Cpu).unwrap();
        let e = Tensor::dropout_backward(&x, &bad, 0.5)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("dropout_backward:") && e.contains("[2, 3]"),
            "{e}"
        );
        let f = Tensor::ones(&[2, 3], DType::F32, Device::Cpu).unwrap();
        let e = Tensor::dropout_backward(&x, &f, 0.5)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("dropout_backward:"), "{e}");
    }
}
