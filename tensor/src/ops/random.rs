//! Random tensors from the Philox stream (see `crate::rng` for the stream layout, which the GPU
//! kernels reproduce element for element).

use crate::rng::{normal_at, uniform_at, Rng};
use crate::{DType, Device, Error, Result, Tensor};
use rayon::prelude::*;

/// Elements per rayon task for the generators.
const CHUNK: usize = 1 << 14;

impl Tensor {
    /// Uniform in [lo, hi), drawn in f32 (in f64 for an f64 tensor, from the same 24-bit words).
    pub fn rand_uniform(
        shape: &[usize],
        lo: f64,
        hi: f64,
        dtype: DType,
        device: Device,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let _p = crate::profiler::scope("rand_uniform");
        let n: usize = shape.iter().product();
        let (seed, off) = (rng.seed, rng.reserve(n, 4));
        let mut v = vec![0f64; n];
        v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
            for (j, x) in chunk.iter_mut().enumerate() {
                let u = uniform_at(seed, off, (c * CHUNK + j) as u64) as f64;
                *x = lo + (hi - lo) * u;
            }
        });
        Tensor::from_vec(v, shape)?
            .to_dtype(dtype)?
            .to_device(device)
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
        let n: usize = shape.iter().product();
        let (seed, off) = (rng.seed, rng.reserve(n, 2));
        let mut v = vec![0f64; n];
        v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
            for (j, x) in chunk.iter_mut().enumerate() {
                *x = mean + std * normal_at(seed, off, (c * CHUNK + j) as u64);
            }
        });
        Tensor::from_vec(v, shape)?
            .to_dtype(dtype)?
            .to_device(device)
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
        let mut v = vec![0u8; n];
        v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
            for (j, x) in chunk.iter_mut().enumerate() {
                *x = (uniform_at(seed, off, (c * CHUNK + j) as u64) < p32) as u8;
            }
        });
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
