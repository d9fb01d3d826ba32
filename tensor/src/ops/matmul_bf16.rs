//! Matrix products in bf16 on the CPU (`cpu::bf16_gemm`): the operands, f32 or bf16, any
//! strides, are rounded to bf16 and the products summed in f32, as torch's CPU autocast does.
//!
//! - `matmul_bf16` / `matmul_bias_bf16` return f32: the products of `autograd::autocast(BF16)`
//!   on the CPU (forward and backward), attention's two batched products included.
//! - `PackedWeight` + `matmul_packed_bf16`: the right operand packed once (the inference
//!   `Linear` keeps it per weight value) with the bias and GELU fused into the GEMM's epilogue.
//! - `matmul` / `matmul_bias` of bf16 tensors use the same GEMM with a bf16 output.

use crate::cpu::bf16_gemm::{
    self, filled, small, Bf16Source, Epilogue, OutElem, PackedA, PackedB, Strided,
};
use crate::ops::matmul::check_operands;
use crate::profiler::Scope;
use crate::{broadcast_shapes, DType, Error, Layout, Result, Tensor};
use half::bf16;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// What [`Tensor::matmul_packed_bf16_with`] applies to the f32 sums, in this order, and the
/// output dtype.
#[derive(Clone, Copy)]
pub struct PackedEpilogue<'a> {
    /// [n], added to each row.
    pub bias: Option<&'a Tensor>,
    /// The erf GELU after the bias.
    pub gelu: bool,
    /// [m, n], added last (a residual connection).
    pub residual: Option<&'a Tensor>,
    /// F32 or BF16.
    pub out: DType,
}

impl Default for PackedEpilogue<'_> {
    fn default() -> Self {
        PackedEpilogue {
            bias: None,
            gelu: false,
            residual: None,
            out: DType::F32,
        }
    }
}

/// A right operand [k, n] in the GEMM's packed bf16 layout, made once and reused.
pub struct PackedWeight(PackedB);

impl PackedWeight {
    /// Packs `w` [k, n] (f32 or bf16, any strides, on the CPU).
    pub fn pack(w: &Tensor) -> Result<PackedWeight> {
        const OP: &str = "pack_bf16";
        if w.rank() != 2 {
            crate::bail!(OP, "expects a [k, n] matrix, got {:?}", w.shape());
        }
        let (k, n) = (w.shape()[0], w.shape()[1]);
        let l = w.layout();
        let (offset, rs, cs) = (l.offset(), l.strides()[0], l.strides()[1]);
        check_cpu(OP, &[w])?;
        Ok(PackedWeight(source(OP, w)?.pack_b(offset, rs, cs, k, n)))
    }

    /// [k, n].
    pub fn shape(&self) -> [usize; 2] {
        [self.0.k, self.0.n]
    }
}

/// `t`'s CPU elements as f32 or bf16.
fn source<'a>(op: &'static str, t: &'a Tensor) -> Result<SourceSlice<'a>> {
    let s = t.cpu_storage(op)?;
    match t.dtype() {
        DType::F32 => Ok(SourceSlice::F32(s.as_slice::<f32>(op)?)),
        DType::BF16 => Ok(SourceSlice::Bf16(s.as_slice::<bf16>(op)?)),
        dtype => Err(Error::UnsupportedDType { op, dtype }),
    }
}

/// A CPU buffer the GEMM can round to bf16.
#[derive(Clone, Copy)]
enum SourceSlice<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

impl SourceSlice<'_> {
    fn pack_a(self, offset: usize, rs: usize, cs: usize, m: usize, k: usize) -> PackedA {
        fn go<T: Bf16Source>(
            data: &[T],
            o: usize,
            rs: usize,
            cs: usize,
            m: usize,
            k: usize,
        ) -> PackedA {
            PackedA::pack(
                Strided {
                    data,
                    offset: o,
                    rs,
                    cs,
                },
                m,
                k,
            )
        }
        match self {
            SourceSlice::F32(d) => go(d, offset, rs, cs, m, k),
            SourceSlice::Bf16(d) => go(d, offset, rs, cs, m, k),
        }
    }

    fn pack_b(self, offset: usize, rs: usize, cs: usize, k: usize, n: usize) -> PackedB {
        fn go<T: Bf16Source>(
            data: &[T],
            o: usize,
            rs: usize,
            cs: usize,
            k: usize,
            n: usize,
        ) -> PackedB {
            PackedB::pack(
                Strided {
                    data,
                    offset: o,
                    rs,
                    cs,
                },
                k,
                n,
            )
        }
        match self {
            SourceSlice::F32(d) => go(d, offset, rs, cs, k, n),
            SourceSlice::Bf16(d) => go(d, offset, rs, cs, k, n),
        }
    }
}

/// Multiply-adds per product (m k n) up to which it runs in `bf16_gemm::small`, the tasks
/// packing their own operands into per-thread buffers: the demo's tiny BERT (at most
/// 768 x 512 x 128 = 50M) and attention's head products go there, BERT-base's linear layers
/// (1024 x 768 x 768 = 604M and up) keep the general driver, whose A is packed once for all
/// its column tiles.
const SMALL_MACS: usize = 1 << 26;

fn is_small(m: usize, k: usize, n: usize) -> bool {
    m.saturating_mul(k).saturating_mul(n) <= SMALL_MACS
}

/// One operand of one batch entry: (offset, row stride, column stride) into its buffer.
type Operand = (usize, usize, usize);

impl SourceSlice<'_> {
    /// `out[e]` = epilogue(`self`[a[e]] `rhs`[b[e]]) through `bf16_gemm::small` (b has one entry,
    /// shared, or one per entry).
    fn small_product<O: OutElem>(
        self,
        a: &[Operand],
        rhs: SourceSlice,
        b: &[Operand],
        mkn: (usize, usize, usize),
        ep: Epilogue,
        out: &mut [MaybeUninit<O>],
    ) {
        fn views<'a, T>(data: &'a [T], ops: &[Operand]) -> Vec<Strided<'a, T>> {
            ops.iter()
                .map(|&(offset, rs, cs)| Strided {
                    data,
                    offset,
                    rs,
                    cs,
                })
                .collect()
        }
        fn with_rhs<TA: Bf16Source, O: OutElem>(
            a: &[Strided<TA>],
            rhs: SourceSlice,
            b: &[Operand],
            mkn: (usize, usize, usize),
            ep: Epilogue,
            out: &mut [MaybeUninit<O>],
        ) {
            match rhs {
                SourceSlice::F32(d) => small::gemm_strided(a, &views(d, b), mkn, ep, out),
                SourceSlice::Bf16(d) => small::gemm_strided(a, &views(d, b), mkn, ep, out),
            }
        }
        match self {
            SourceSlice::F32(d) => with_rhs(&views(d, a), rhs, b, mkn, ep, out),
            SourceSlice::Bf16(d) => with_rhs(&views(d, a), rhs, b, mkn, ep, out),
        }
    }
}

/// Both operands on the CPU, f32 or bf16 each.
fn check_cpu(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    for t in ts {
        if !t.device().is_cpu() {
            crate::bail!(
                op,
                "is the CPU's bf16 GEMM; got a tensor on {:?}",
                t.device()
            );
        }
        if !matches!(t.dtype(), DType::F32 | DType::BF16) {
            return Err(Error::UnsupportedDType {
                op,
                dtype: t.dtype(),
            });
        }
    }
    Ok(())
}

/// The bias as f32 [n] on the CPU.
fn bias_f32(op: &'static str, bias: &Tensor, n: usize) -> Result<Vec<f32>> {
    if bias.shape() != [n] || !bias.device().is_cpu() {
        crate::bail!(
            op,
            "expects a CPU bias of shape [{n}], got {:?}",
            bias.shape()
        );
    }
    bias.to_dtype(DType::F32)?.to_vec::<f32>()
}

/// The batched product of `lhs` [.., m, k] and `rhs` [.., k, n] (batch dims broadcast) through
/// the bf16 GEMM, written as `O`; returns the output and its shape.
fn product<O: OutElem>(
    op: &'static str,
    lhs: &Tensor,
    rhs: &Tensor,
    bias: Option<&[f32]>,
    gelu: bool,
) -> Result<(Vec<O>, Vec<usize>)> {
    check_cpu(op, &[lhs, rhs])?;
    let (a, b) = (lhs.shape(), rhs.shape());
    let (m, k, n) = check_operands(op, lhs, rhs)?;
    let (ra, rb) = (a.len(), b.len());
    let batch =
        broadcast_shapes(op, &a[..ra - 2], &b[..rb - 2]).map_err(|_| Error::ShapeMismatch {
            op,
            lhs: a.to_vec(),
            rhs: b.to_vec(),
        })?;
    let with = |tail: [usize; 2]| [batch.as_slice(), &tail].concat();
    let (lhs_l, rhs_l) = (
        lhs.layout().broadcast_to(op, &with([m, k]))?,
        rhs.layout().broadcast_to(op, &with([k, n]))?,
    );
    let entries: usize = batch.iter().product();
    let shape = with([m, n]);
    if entries * m * n == 0 {
        return Ok((Vec::new(), shape));
    }
    let r = batch.len() + 2;
    let tail = |l: &Layout| (l.strides()[r - 2], l.strides()[r - 1]);
    let (sa, sb) = (source(op, lhs)?, source(op, rhs)?);
    let rhs_shared = rhs_l.strides()[..r - 2].iter().all(|&s| s == 0) || entries == 1;
    let (ars, acs) = tail(&lhs_l);
    let (brs, bcs) = tail(&rhs_l);
    let ep = Epilogue {
        bias,
        gelu,
        residual: None,
    };
    let fill = |out: &mut [MaybeUninit<O>]| {
        // The linear-layer case: the batch folded into the rows of one product.
        if let (true, Some(folded)) = (rhs_shared, lhs_l.reshape(&[entries * m, k])) {
            let (frs, fcs) = (folded.strides()[0], folded.strides()[1]);
            if is_small(entries * m, k, n) {
                let a = [(folded.offset(), frs, fcs)];
                let b = [(rhs_l.offset(), brs, bcs)];
                return sa.small_product(&a, sb, &b, (entries * m, k, n), ep, out);
            }
            let pa = sa.pack_a(folded.offset(), frs, fcs, entries * m, k);
            let pb = sb.pack_b(rhs_l.offset(), brs, bcs, k, n);
            return bf16_gemm::gemm(&[&pa], &[&pb], ep, out);
        }
        let offsets = |l: &Layout| {
            Layout::new(batch.clone(), l.strides()[..r - 2].to_vec(), l.offset()).offsets()
        };
        let (lo, ro) = (offsets(&lhs_l), offsets(&rhs_l));
        if is_small(m, k, n) {
            let a: Vec<_> = lo.iter().map(|&o| (o, ars, acs)).collect();
            let b: Vec<_> = ro[..if rhs_shared { 1 } else { ro.len() }]
                .iter()
                .map(|&o| (o, brs, bcs))
                .collect();
            return sa.small_product(&a, sb, &b, (m, k, n), ep, out);
        }
        // Many small entries (attention's [B, H] products): pack them in parallel, one task each.
        let pas: Vec<PackedA> = lo
            .par_iter()
            .map(|&o| sa.pack_a(o, ars, acs, m, k))
            .collect();
        let pbs: Vec<PackedB> = if rhs_shared {
            vec![sb.pack_b(ro[0], brs, bcs, k, n)]
        } else {
            ro.par_iter()
                .map(|&o| sb.pack_b(o, brs, bcs, k, n))
                .collect()
        };
        let (ra_, rb_): (Vec<&PackedA>, Vec<&PackedB>) =
            (pas.iter().collect(), pbs.iter().collect());
        bf16_gemm::gemm(&ra_, &rb_, ep, out)
    };
    // SAFETY: each path is one GEMM over the whole [entries, m, n] output, which writes all of it.
    Ok((unsafe { filled(entries * m * n, fill) }, shape))
}

/// The profiler scope of a bf16 product `lhs [.., m, k] @ rhs [.., k, n]` (batch from the
/// broadcast leading dimensions), its FLOPs and bytes from the shapes.
fn profile(op: &'static str, lhs: &Tensor, rhs: &Tensor, bias: Option<&Tensor>) -> Scope {
    if !crate::profiler::enabled() || lhs.rank() < 2 || rhs.rank() < 2 {
        return crate::profiler::scope(op);
    }
    let (a, b) = (lhs.shape(), rhs.shape());
    let (m, k, n) = (a[a.len() - 2], a[a.len() - 1], b[b.len() - 1]);
    let lead = |s: &[usize]| s[..s.len() - 2].iter().product::<usize>();
    let batch = lead(a).max(lead(b));
    let mut out = if a.len() >= b.len() { a } else { b }.to_vec();
    let last = out.len() - 1;
    (out[last - 1], out[last]) = (m, n);
    let inputs: Vec<&Tensor> = [lhs, rhs].into_iter().chain(bias).collect();
    crate::profiler::scope(op)
        .io(&inputs, &out)
        .flops(crate::profiler::flops::matmul(batch, m, k, n))
}

impl Tensor {
    /// `matmul` with the operands rounded to bf16 and the sums in f32; returns f32 (module doc).
    pub fn matmul_bf16(&self, rhs: &Tensor) -> Result<Tensor> {
        const OP: &str = "matmul_bf16";
        let _p = profile(OP, self, rhs, None);
        let (out, shape) = product::<f32>(OP, self, rhs, None, false)?;
        Tensor::from_vec(out, &shape)
    }

    /// `self [m, k] @ rhs [k, n] + bias [n]`, then GELU when `gelu`, in the bf16 GEMM (the bias
    /// and GELU in its f32 epilogue); returns f32.
    pub fn matmul_bias_bf16(&self, rhs: &Tensor, bias: &Tensor, gelu: bool) -> Result<Tensor> {
        const OP: &str = "matmul_bias_bf16";
        if self.rank() != 2 || rhs.rank() != 2 {
            crate::bail!(
                OP,
                "expects [m, k] @ [k, n], got {:?} @ {:?}",
                self.shape(),
                rhs.shape()
            );
        }
        let _p = profile(OP, self, rhs, Some(bias));
        let b = bias_f32(OP, bias, rhs.shape()[1])?;
        let (out, shape) = product::<f32>(OP, self, rhs, Some(&b), gelu)?;
        Tensor::from_vec(out, &shape)
    }

    /// `self [m, k]` times a packed weight [k, n], plus the bias and GELU if given; returns f32.
    pub fn matmul_packed_bf16(
        &self,
        w: &PackedWeight,
        bias: Option<&Tensor>,
        gelu: bool,
    ) -> Result<Tensor> {
        let ep = PackedEpilogue {
            bias,
            gelu,
            ..Default::default()
        };
        self.matmul_packed_bf16_with(w, &ep)
    }

    /// `self [m, k]` (f32 or bf16) times a packed weight [k, n], then `ep` in the GEMM's
    /// epilogue, written in `ep.out` (f32 or bf16: bf16 rounds the f32 result once, as packing
    /// it for a next product would).
    pub fn matmul_packed_bf16_with(&self, w: &PackedWeight, ep: &PackedEpilogue) -> Result<Tensor> {
        const OP: &str = "matmul_packed_bf16";
        check_cpu(OP, &[self])?;
        let [k, n] = w.shape();
        if self.rank() != 2 || self.shape()[1] != k {
            crate::bail!(
                OP,
                "expects [m, {k}] for a [{k}, {n}] weight, got {:?}",
                self.shape()
            );
        }
        let m = self.shape()[0];
        let residual = match ep.residual {
            Some(r) if r.shape() != [m, n] || !r.device().is_cpu() => crate::bail!(
                OP,
                "expects a CPU residual of shape [{m}, {n}], got {:?}",
                r.shape()
            ),
            Some(r) => Some(r.to_dtype(DType::F32)?.contiguous()?),
            None => None,
        };
        let inputs: Vec<&Tensor> = [self].into_iter().chain(residual.as_ref()).collect();
        let _p = crate::profiler::scope(OP)
            .io(&inputs, &[m, n])
            .extra_bytes((k * n * 2) as u64)
            .flops(crate::profiler::flops::matmul(1, m, k, n));
        let b = ep.bias.map(|b| bias_f32(OP, b, n)).transpose()?;
        let residual = residual
            .as_ref()
            .map(|r| {
                r.cpu_storage(OP)?
                    .as_slice::<f32>(OP)
                    .map(|s| &s[r.layout().offset()..][..m * n])
            })
            .transpose()?;
        let l = self.layout();
        let (offset, rs, cs) = (l.offset(), l.strides()[0], l.strides()[1]);
        let pa = source(OP, self)?.pack_a(offset, rs, cs, m, k);
        let gemm_ep = Epilogue {
            bias: b.as_deref(),
            gelu: ep.gelu,
            residual,
        };
        match ep.out {
            // SAFETY: the product writes all of its [m, n] output.
            DType::F32 => Tensor::from_vec(
                unsafe { filled::<f32>(m * n, |o| bf16_gemm::gemm(&[&pa], &[&w.0], gemm_ep, o)) },
                &[m, n],
            ),
            DType::BF16 => Tensor::from_vec(
                unsafe { filled::<bf16>(m * n, |o| bf16_gemm::gemm(&[&pa], &[&w.0], gemm_ep, o)) },
                &[m, n],
            ),
            dtype => Err(Error::UnsupportedDType { op: OP, dtype }),
        }
    }

    /// `matmul` of two bf16 CPU tensors: the bf16 GEMM with a bf16 output.
    pub(crate) fn matmul_bf16_out(&self, rhs: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        const OP: &str = "matmul";
        let b = match bias {
            Some(b) => Some(bias_f32(OP, b, rhs.shape()[rhs.rank() - 1])?),
            None => None,
        };
        let (out, shape) = product::<bf16>(OP, self, rhs, b.as_deref(), false)?;
        Tensor::from_vec(out, &shape)
    }
}

#[cfg(test)]
mod tests {
    //! The Tensor-level doors of the bf16 GEMM on fresh random operands, through views (a row
    //! stride wider than the row, an offset, a transpose): against the f64 product of the
    //! bf16-rounded operands within bf16's tolerance (relative 1e-2), and against an f32 GEMM
    //! (`Tensor::matmul`) of the same rounded operands up to the order of the f32 additions.
    //! The kernels themselves, backend by backend, are tested in `cpu::bf16_gemm`.
    use super::*;
    use crate::testing::uniform;

    /// An [r, c] operand as a non-contiguous view: narrowed out of a wider matrix (offset 2,
    /// row stride c + 3), or, when `transposed`, the transpose of such a [c, r] view.
    fn view(r: usize, c: usize, transposed: bool, seed: u64) -> Tensor {
        let (rows, cols) = if transposed { (c, r) } else { (r, c) };
        let wide = uniform(&[rows, cols + 3], -2.0, 2.0, DType::F32, seed);
        let v = wide.narrow(1, 2, cols).unwrap();
        if transposed {
            v.t().unwrap()
        } else {
            v
        }
    }

    /// The operand's values rounded to bf16, in logical order, as f64 [r, c].
    fn rounded(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::BF16).unwrap().to_vec_f64().unwrap()
    }

    /// Checks `got` [m, n] against the rounded operands: relative 1e-2 of the f64 product (the
    /// issue's bf16 tolerance), and within f32 accumulation error of `f32_gemm` (both sum the
    /// same exact products in f32, in different orders: each is off by at most (k + 1) 2^-24
    /// sum |a b| from the exact sum).
    fn check(got: &Tensor, a: &Tensor, b: &Tensor, f32_gemm: &Tensor, what: &str) {
        let (m, k, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
        let (ra, rb) = (rounded(a), rounded(b));
        let (got, f32_gemm) = (got.to_vec_f64().unwrap(), f32_gemm.to_vec_f64().unwrap());
        let mut want = vec![0f64; m * n];
        let mut abs = vec![0f64; m * n];
        for i in 0..m {
            for l in 0..k {
                for j in 0..n {
                    let p = ra[i * k + l] * rb[l * n + j];
                    want[i * n + j] += p;
                    abs[i * n + j] += p.abs();
                }
            }
        }
        let scale = want.iter().fold(1e-30f64, |s, x| s.max(x.abs()));
        for e in 0..m * n {
            let rel = (got[e] - want[e]).abs() / scale;
            assert!(rel <= 1e-2, "{what} {m}x{k}x{n} [{e}]: relative {rel:.2e}");
            let order = 2.0 * (k as f64 + 1.0) * 2f64.powi(-24) * abs[e] + 1e-30;
            let d = (got[e] - f32_gemm[e]).abs();
            assert!(
                d <= order,
                "{what} {m}x{k}x{n} [{e}]: {} vs the f32 GEMM's {} (more than the order's {order:.2e})",
                got[e],
                f32_gemm[e]
            );
        }
    }

    #[test]
    fn matmul_bf16_on_views_matches_f64_and_the_f32_gemm_of_rounded_inputs() {
        let sizes = [
            (1, 17, 33),
            (15, 33, 1),
            (17, 1, 15),
            (33, 1000, 17),
            (1000, 15, 33),
            (33, 17, 1000),
        ];
        let as_f32 = |t: &Tensor| t.to_dtype(DType::BF16)?.to_dtype(DType::F32);
        for (s, &(m, k, n)) in sizes.iter().enumerate() {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let what = format!("ta={ta} tb={tb}");
                let a = view(m, k, ta, 10 * s as u64);
                let b = view(k, n, tb, 10 * s as u64 + 1);
                assert!(!a.is_contiguous() && !b.is_contiguous() || m == 1 || n == 1 || k == 1);
                let got = a.matmul_bf16(&b).unwrap();
                assert_eq!(got.dtype(), DType::F32);
                let f32_gemm = as_f32(&a).unwrap().matmul(&as_f32(&b).unwrap()).unwrap();
                check(&got, &a, &b, &f32_gemm, &what);
                // The packed weight runs the same kernel in the same order: the same f32 sums.
                let packed = a
                    .matmul_packed_bf16(&PackedWeight::pack(&b).unwrap(), None, false)
                    .unwrap();
                assert_eq!(
                    packed.to_vec::<f32>().unwrap(),
                    got.to_vec::<f32>().unwrap()
                );
            }
        }
    }

    #[test]
    fn bias_gelu_epilogue_and_batches_agree_with_the_plain_product() {
        let (m, k, n) = (33, 70, 17);
        let a = view(m, k, true, 1);
        let b = view(k, n, false, 2);
        let bias = uniform(&[n], -1.0, 1.0, DType::F32, 3);
        let plain = a.matmul_bf16(&b).unwrap();
        for gelu in [false, true] {
            let fused = a.matmul_bias_bf16(&b, &bias, gelu).unwrap();
            let mut want = plain.add(&bias).unwrap();
            if gelu {
                want = want.gelu().unwrap();
            }
            // The same f32 sum, then the bias and GELU in f32 (one rounding each).
            let err = crate::testing::max_rel_err(&fused, &want);
            assert!(err <= 1e-6, "gelu={gelu}: {err:.2e}");
            let packed = a
                .matmul_packed_bf16(&PackedWeight::pack(&b).unwrap(), Some(&bias), gelu)
                .unwrap();
            assert_eq!(
                packed.to_vec::<f32>().unwrap(),
                fused.to_vec::<f32>().unwrap()
            );
        }
        // Batched operands, the right one broadcast over a batch dim: each entry is the 2-D
        // product bit for bit (the sums' order does not depend on where a row sits).
        let lhs = uniform(&[2, 3, 15, 17], -2.0, 2.0, DType::F32, 4)
            .transpose(0, 1)
            .unwrap();
        let rhs = uniform(&[3, 1, 17, 33], -2.0, 2.0, DType::F32, 5);
        let got = lhs.matmul_bf16(&rhs).unwrap();
        assert_eq!(got.shape(), [3, 2, 15, 33]);
        for i in 0..3 {
            for j in 0..2 {
                let ai = lhs.narrow(0, i, 1).unwrap().narrow(1, j, 1).unwrap();
                let ai = ai.reshape(&[15, 17]).unwrap();
                let bi = rhs.narrow(0, i, 1).unwrap().reshape(&[17, 33]).unwrap();
                let gi = got.narrow(0, i, 1).unwrap().narrow(1, j, 1).unwrap();
                assert_eq!(
                    gi.to_vec::<f32>().unwrap(),
                    ai.matmul_bf16(&bi).unwrap().to_vec::<f32>().unwrap(),
                    "entry ({i}, {j})"
                );
            }
        }
        // A bad operand is an error, not a panic.
        let bad = uniform(&[4, 5], -1.0, 1.0, DType::F32, 6);
        assert!(a.matmul_bf16(&bad).is_err());
        assert!(a
            .matmul_bias_bf16(&b, &uniform(&[n + 1], 0.0, 1.0, DType::F32, 7), false)
            .is_err());
    }
}
