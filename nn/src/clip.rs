//! Global L2-norm gradient clipping, as `torch.nn.utils.clip_grad_norm_(params, max_norm)`.
//!
//! `total = sqrt(sum over every gradient element of g^2)` (squares accumulated in f64, in a fixed
//! order: the same gradients always give the same bits). When `coef = max_norm / (total + 1e-6)`
//! is below 1, every gradient is multiplied by `coef` (rounded to f32) in place.
//!
//! A non-finite total (an inf or NaN gradient, e.g. an fp16 overflow) is returned to the caller
//! and the gradients are left as they are; torch would scale them by NaN. Either way that step
//! must be skipped (the loss scaler reports the same condition).
//!
//! Gradients are f32 tensors of any layout; a non-contiguous one is made contiguous when scaled.
//!
//! Devices: all gradients on one device. On a GPU (feature `cuda`) the squares are summed in f64
//! by one multi-tensor launch and its per-chunk sums added on the host (one wait for the GPU per
//! call), and the scaling is one launch multiplying in f32 as here. Each square is the same f64
//! value on both devices, but the additions are grouped differently, so the GPU's total may differ
//! from the CPU's in its last few f64 bits (then so may `coef`, rarely enough to change its f32
//! rounding); on one device the same gradients always give the same bits.

use crate::optim::{f32_values, f32_values_mut, gradients_device, map_chunks, map_chunks_mut};
use tensor::{bail, Device, Result, Tensor};

const OP: &str = "clip_grad_norm";

/// Sum of squares in f64, 8 independent accumulators so the loop vectorises.
fn sum_sq(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for (a, &v) in acc.iter_mut().zip(c) {
            let v = v as f64;
            *a += v * v;
        }
    }
    let tail: f64 = it
        .remainder()
        .iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum();
    acc.iter().sum::<f64>() + tail
}

/// The L2 norm of all `grads` taken together, as one vector (all on one device).
pub fn total_norm(grads: &[&Tensor]) -> Result<f64> {
    let device = gradients_device(OP, grads.iter().map(|g| g.device()))?;
    total_norm_on(device, grads)
}

/// [`total_norm`] of gradients known to be on `device`.
fn total_norm_on(device: Device, grads: &[&Tensor]) -> Result<f64> {
    if device == Device::Cpu {
        let mut total = 0f64;
        for (i, g) in grads.iter().enumerate() {
            let x = f32_values(g, OP, &format!("gradient {i}"))?;
            total += map_chunks(&x, sum_sq).iter().sum::<f64>();
        }
        return Ok(total.sqrt());
    }
    // Checks each gradient's dtype, naming it as above.
    #[cfg(feature = "cuda")]
    return Ok(tensor::cuda::optim::sum_of_squares(grads)?.sqrt());
    #[cfg(not(feature = "cuda"))]
    Err(crate::optim::without_cuda(OP, device))
}

/// Multiplies every element by `k`, in place.
fn scale_in_place(t: &mut Tensor, k: f32, op: &'static str, what: &str) -> Result<()> {
    let x = f32_values_mut(t, op, what)?;
    map_chunks_mut(x, |c| c.iter_mut().for_each(|v| *v *= k));
    Ok(())
}

/// Clips `grads` in place to a global L2 norm of at most `max_norm` and returns their total norm
/// before clipping (possibly non-finite; see the module docs).
pub fn clip_grad_norm(grads: &mut [&mut Tensor], max_norm: f64) -> Result<f64> {
    if max_norm.is_nan() || max_norm < 0.0 {
        bail!(OP, "max_norm must be >= 0, got {max_norm}");
    }
    let refs: Vec<&Tensor> = grads.iter().map(|g| &**g).collect();
    let device = gradients_device(OP, refs.iter().map(|g| g.device()))?;
    let total = total_norm_on(device, &refs)?;
    if !total.is_finite() {
        return Ok(total);
    }
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        if device == Device::Cpu {
            for (i, g) in grads.iter_mut().enumerate() {
                scale_in_place(g, coef as f32, OP, &format!("gradient {i}"))?;
            }
        } else {
            // Reached only with the `cuda` feature: total_norm_on refuses GPUs without it.
            #[cfg(feature = "cuda")]
            tensor::cuda::optim::scale(grads, coef as f32)?;
        }
    }
    Ok(total)
}

/// [`clip_grad_norm`] with no wait for a GPU: the same clipping (the same numbers), but the norm
/// before clipping comes back as a rank-0 f64 tensor on the gradients' device, to be read only
/// when it is logged. On a GPU the norm and the factor are computed by the device and the
/// scaling reads the factor there; a non-finite norm leaves the gradients as they are.
pub fn clip_grad_norm_deferred(grads: &mut [&mut Tensor], max_norm: f64) -> Result<Tensor> {
    if max_norm.is_nan() || max_norm < 0.0 {
        bail!(OP, "max_norm must be >= 0, got {max_norm}");
    }
    let refs: Vec<&Tensor> = grads.iter().map(|g| &**g).collect();
    let device = gradients_device(OP, refs.iter().map(|g| g.device()))?;
    #[cfg(feature = "cuda")]
    if device != Device::Cpu {
        if let Some(norm) = tensor::cuda::optim::clip_on_device(grads, max_norm)? {
            return Ok(norm);
        }
    }
    let norm = clip_grad_norm(grads, max_norm)?;
    Tensor::from_vec(vec![norm], &[])?.to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensor::{DType, Device};

    fn randn(shape: &[usize], seed: u64, std: f64) -> Tensor {
        tensor::testing::randn(shape, std, DType::F32, seed)
    }

    fn naive_norm(ts: &[&Tensor]) -> f64 {
        ts.iter()
            .flat_map(|t| t.to_vec_f64().unwrap())
            .map(|x| x * x)
            .sum::<f64>()
            .sqrt()
    }

    #[test]
    fn clips_to_max_norm_across_tensors() {
        // Sizes: serial, ragged, parallel (> 32K), zero-size; one transposed view.
        let a = randn(&[3, 5], 1, 1.0);
        let b = randn(&[70_003], 2, 1.0);
        let c = randn(&[0, 4], 3, 1.0);
        let d = randn(&[4, 6], 4, 1.0).t().unwrap();
        let want = naive_norm(&[&a, &b, &c, &d]);
        let before: Vec<Vec<f64>> = [&a, &b, &c, &d]
            .iter()
            .map(|t| t.to_vec_f64().unwrap())
            .collect();
        let (mut a2, mut b2, mut c2, mut d2) = (a.clone(), b.clone(), c.clone(), d.clone());
        let total = clip_grad_norm(&mut [&mut a2, &mut b2, &mut c2, &mut d2], 1.0).unwrap();
        assert!((total - want).abs() <= 1e-12 * want, "{total} vs {want}");
        let after = naive_norm(&[&a2, &b2, &c2, &d2]);
        assert!((after - 1.0).abs() < 1e-5, "clipped norm {after}");
        let coef = 1.0 / (want + 1e-6);
        for (t, orig) in [&a2, &b2, &c2, &d2].iter().zip(&before) {
            for (x, y) in t.to_vec_f64().unwrap().iter().zip(orig) {
                assert!((x - y * coef).abs() <= 1e-6 * y.abs().max(1e-30), "{x} {y}");
            }
        }
        // d2 stays [6, 4].
        assert_eq!(d2.shape(), &[6, 4]);
    }

    #[test]
    fn small_norm_is_left_alone_and_repeatable() {
        let a = randn(&[10], 5, 0.01);
        let mut a2 = a.clone();
        let total = clip_grad_norm(&mut [&mut a2], 1.0).unwrap();
        assert!(total < 1.0);
        assert_eq!(a2.to_vec::<f32>().unwrap(), a.to_vec::<f32>().unwrap());
        // Same input, same bits (parallel partial sums are combined in a fixed order).
        let big = randn(&[100_000], 6, 1.0);
        let n1 = total_norm(&[&big]).unwrap();
        let n2 = total_norm(&[&big]).unwrap();
        assert_eq!(n1.to_bits(), n2.to_bits());
        assert_eq!(total_norm(&[]).unwrap(), 0.0);
    }

    #[test]
    fn non_finite_norm_is_reported_and_grads_untouched() {
        for bad in [f32::INFINITY, f32::NAN] {
            let a = Tensor::from_vec(vec![3.0f32, bad, 4.0], &[3]).unwrap();
            let b = randn(&[5], 7, 10.0);
            let (mut a2, mut b2) = (a.clone(), b.clone());
            let total = clip_grad_norm(&mut [&mut a2, &mut b2], 1.0).unwrap();
            assert!(!total.is_finite(), "{total}");
            assert_eq!(b2.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
        }
    }

    #[test]
    fn errors() {
        let mut h = Tensor::zeros(&[2], DType::F64, Device::Cpu).unwrap();
        let err = clip_grad_norm(&mut [&mut h], 1.0).unwrap_err().to_string();
        assert!(err.starts_with(OP) && err.contains("gradient 0"), "{err}");
        let mut a = randn(&[2], 1, 1.0);
        assert!(clip_grad_norm(&mut [&mut a], -1.0).is_err());
        assert!(clip_grad_norm(&mut [&mut a], f64::NAN).is_err());
    }
}
