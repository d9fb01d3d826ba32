//! Random tensors from the Philox stream (see `crate::rng` for the stream layout, which the GPU
//! kernels reproduce element for element).

use crate::rng::{normal_at, uniform_at, Rng};
use crate::{DType, Device, Error, Result, Tensor, WithDType};
use rayon::prelude::*;

/// Elements per rayon task for the generators.
const CHUNK: usize = 1 << 14;

/// A tensor of `shape` whose element `i` is `f(i)`, computed in parallel. f32 tensors are filled
/// directly; other dtypes are filled in f64 and cast (rounding once either way).
fn generate(
    shape: &[usize],
    dtype: DType,
    device: Device,
    f: impl Fn(u64) -> f64 + Sync,
) -> Result<Tensor> {
    fn fill<T: WithDType>(n: usize, f: &(impl Fn(u64) -> f64 + Sync)) -> Vec<T> {
        let mut v = vec![T::from_f64(0.0); n];
        v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
            for (j, x) in chunk.iter_mut().enumerate() {
                *x = T::from_f64(f((c * CHUNK + j) as u64));
            }
        });
        v
    }
    let n: usize = shape.iter().product();
    let t = match dtype {
        DType::F32 => Tensor::from_vec(fill::<f32>(n, &f), shape)?,
        _ => Tensor::from_vec(fill::<f64>(n, &f), shape)?.to_dtype(dtype)?,
    };
    t.to_device(device)
}

impl Tensor {
    /// Uniform in [lo, hi): lo + (hi - lo) u in f64 from the 24-bit uniform u, rounded to `dtype`.
    pub fn rand_uniform(
        shape: &[usize],
        lo: f64,
        hi: f64,
        dtype: DType,
        device: Device,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let _p = crate::profiler::scope("rand_uniform");
        let (seed, off) = (rng.seed, rng.reserve(shape.iter().product(), 4));
        generate(shape, dtype, device, |i| {
            lo + (hi - lo) * uniform_at(seed, off, i) as f64
        })
    }

    /// Normal with the given mean and std (Box-Muller in f64, rounded to `dtype`).
    pub fn randn(
        shape: &[usize],
        mean: f64,
        std: f64,
        dtype: DType,
        device: Device,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let _p = crate::profiler::scope("randn");
        let (seed, off) = (rng.seed, rng.reserve(shape.iter().product(), 2));
        generate(shape, dtype, device, |i| {
            mean + std * normal_at(seed, off, i)
        })
    }

    /// A u8 mask: 1 where uniform element i < p. Dropout keeps elements where this is 0 for p =
    /// the drop probability, so both use the same words.
    pub fn bernoulli(shape: &[usize], p: f64, device: Device, rng: &mut Rng) -> Result<Tensor> {
        let _p = crate::profiler::scope("bernoulli");
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::op(
                "bernoulli",
                format!("p must be in [0, 1], got {p}"),
            ));
        }
        let n: usize = shape.iter().product();
        let (seed, off) = (rng.seed, rng.reserve(n, 4));
        let p32 = p as f32;
        let v = crate::rng::uniform_mask(seed, off, n, p32, 1);
        Tensor::from_vec(v, shape)?.to_device(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_tensor_and_rates() {
        let a = Tensor::randn(
            &[1000],
            0.0,
            0.02,
            DType::F32,
            Device::Cpu,
            &mut Rng::new(5),
        )
        .unwrap();
        let b = Tensor::randn(
            &[1000],
            0.0,
            0.02,
            DType::F32,
            Device::Cpu,
            &mut Rng::new(5),
        )
        .unwrap();
        assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
        let m = Tensor::bernoulli(&[100_000], 0.1, Device::Cpu, &mut Rng::new(9)).unwrap();
        let ones = m
            .to_vec::<u8>()
            .unwrap()
            .iter()
            .filter(|&&x| x == 1)
            .count();
        assert!((ones as f64 / 1e5 - 0.1).abs() < 0.005, "{ones}");
    }
}
