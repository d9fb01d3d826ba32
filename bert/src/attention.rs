//! Multi-head self-attention (`attention.self`) and its output projection (`attention.output`).
//!
//! For x [B, L, H] with n heads of d = H / n dims: q, k, v = x W^T + b, each viewed as
//! [B, n, L, d] (a stride view of the [B, L, H] projection); scores = q k^T [B, n, L, L];
//! probs = softmax(scores / sqrt(d) + mask) over the keys, where the additive mask is 0 on real
//! tokens and the dtype's most negative finite value on padding (HF 5's eager attention; HF 4.17
//! used -10000, which gives the same probabilities); dropout on probs; context = probs v, back to
//! [B, L, H]. The scores-to-context part is `Var::scaled_dot_product_attention` (the composed ops
//! on the CPU, the flash kernels on CUDA). Then `attention.output`:
//! LayerNorm(dropout(context W_o^T + b_o) + x).
//!
//! Under f16/bf16 autocast on a GPU the three projections are one GEMM (fused QKV): x (cast to
//! the half dtype once) times the `[3H, H]` half weight that `nn::fused_half` keeps for
//! query/key/value (the three half copies in one buffer, written by AdamW; the f32 parameters
//! and the checkpoint keep HF's three tensors), plus the `[3H]` bias, gives `[B, L, 3H]`, which
//! `Var::fused_qkv_attention` reads as three strided views. On the CPU, inference under bf16
//! autocast runs the three projections as one product too (`nn::layers::SideBySide`, the same
//! bits as three) and the fused CPU attention on its views, q, k, v and the context passed as
//! bf16 (the rounding their products apply anyway); otherwise the three `Linear`s.

use crate::config::BertConfig;
use crate::init::Init;
use crate::layer::BertOutput;
use autograd::Var;
use nn::layers::{Dropout, Linear, SideBySide};
use nn::{join, Ctx, Module, Param};
use tensor::{bail, DType, Result, Tensor};

/// `attention.output` has the same shape as a layer's `output`: dense, dropout, residual, LayerNorm.
pub type BertSelfOutput = BertOutput;

/// The additive attention mask for a [B, L] 0/1 (any dtype; non-zero = attend) padding mask:
/// [B, 1, 1, L] of `dtype`, `(1 - mask) * dtype_min`, broadcast over heads and queries.
pub fn extended_attention_mask(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    if mask.rank() != 2 {
        bail!(
            "attention_mask",
            "expected [batch, seq], got {:?}",
            mask.shape()
        );
    }
    let min = match dtype {
        DType::F32 => f32::MIN as f64,
        DType::F64 => f64::MIN,
        DType::F16 => half::f16::MIN.to_f64(),
        DType::BF16 => half::bf16::MIN.to_f64(),
        other => bail!(
            "attention_mask",
            "the additive mask needs a float dtype, got {other}"
        ),
    };
    let (b, l) = (mask.shape()[0], mask.shape()[1]);
    // m * (-min) + min: exactly 0 where m == 1 and `min` where m == 0.
    mask.to_dtype(dtype)?
        .affine(-min, min)?
        .reshape(&[b, 1, 1, l])
}

pub struct BertSelfAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub num_heads: usize,
    pub dropout: Dropout,
    /// The three projections as one product in CPU bf16 inference.
    qkv_cpu: SideBySide,
}

impl BertSelfAttention {
    pub fn new(c: &BertConfig, init: &mut Init) -> Result<BertSelfAttention> {
        let h = c.hidden_size;
        Ok(BertSelfAttention {
            query: init.linear(h, h, c)?,
            key: init.linear(h, h, c)?,
            value: init.linear(h, h, c)?,
            num_heads: c.num_attention_heads,
            dropout: Dropout::new(c.attention_probs_dropout_prob),
            qkv_cpu: SideBySide::default(),
        })
    }

    /// x [B, L, H], `mask` the additive [B, 1, 1, L] mask (or None) -> context [B, L, H].
    pub fn forward(&self, x: &Var, mask: Option<&Tensor>, ctx: &mut Ctx) -> Result<Var> {
        let &[b, l, h] = x.shape() else {
            bail!(
                "BertSelfAttention",
                "expected [batch, seq, hidden], got {:?}",
                x.shape()
            );
        };
        let _m = tensor::profiler::module("self");
        let (n, d) = (self.num_heads, h / self.num_heads);
        if let Some(context) = self.forward_fused(x, mask, ctx)? {
            return context.transpose(1, 2)?.reshape(&[b, l, h]);
        }
        let heads = |y: Var| y.reshape(&[b, l, n, d])?.transpose(1, 2);
        let projections = [&self.query, &self.key, &self.value];
        let dropout_off = !ctx.train || self.dropout.p == 0.0;
        let qkv = match dropout_off {
            // q, k and v as bf16: the fused attention's packing rounds them to bf16 anyway.
            true => self.qkv_cpu.forward(&projections, x, DType::BF16)?,
            false => None,
        };
        if let Some(qkv) = qkv {
            // CPU bf16 inference: one product, then three strided views of it (the fused
            // attention reads them in place, and writes the context as bf16 too: the output
            // projection's operand).
            let view = |i: usize| heads(qkv.narrow(2, i * h, h)?);
            let (q, k, v) = (view(0)?, view(1)?, view(2)?);
            let scale = (d as f64).powf(-0.5);
            let context = Var::scaled_dot_product_attention(&q, &k, &v, mask, scale, 0.0, None)?;
            return context.transpose(1, 2)?.reshape(&[b, l, h]);
        }
        let q = heads(self.query.forward(x)?)?;
        let k = heads(self.key.forward(x)?)?;
        let v = heads(self.value.forward(x)?)?;
        // The [B, 1, 1, L] mask broadcasts over heads and queries inside the fused op; dropout
        // draws over the [B, heads, L, L] probabilities.
        let mut rng = match ctx.train && self.dropout.p != 0.0 {
            true => Some(ctx.dropout_rng(b * n * l * l)?),
            false => None,
        };
        let context = Var::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            mask,
            (d as f64).powf(-0.5),
            self.dropout.p,
            rng.as_mut(),
        )?;
        context.transpose(1, 2)?.reshape(&[b, l, h])
    }
}

impl BertSelfAttention {
    /// The fused QKV path (module doc): the context `[B, n, L, d]`, or None when it does not
    /// apply (no half autocast, a CPU tensor, projections without biases).
    fn forward_fused(&self, x: &Var, mask: Option<&Tensor>, ctx: &mut Ctx) -> Result<Option<Var>> {
        let Some(half) = nn::autocast_half(x) else {
            return Ok(None);
        };
        let lin = [&self.query, &self.key, &self.value];
        let weights: Vec<&Param> = lin.iter().map(|l| &l.weight).collect();
        let Some(biases) = lin
            .iter()
            .map(|l| l.bias.as_ref())
            .collect::<Option<Vec<_>>>()
        else {
            return Ok(None);
        };
        let (Some(w), Some(bias)) = (
            nn::fused_half(&weights, half)?,
            nn::fused_half(&biases, half)?,
        ) else {
            return Ok(None);
        };
        let &[b, l, h] = x.shape() else {
            return Ok(None);
        };
        let n = self.num_heads;
        let xh = nn::half_input(x, half)?.reshape(&[b * l, h])?;
        let qkv = xh.matmul_bias(&w.t()?, &bias)?.reshape(&[b, l, 3 * h])?;
        let mut rng = match ctx.train && self.dropout.p != 0.0 {
            true => Some(ctx.dropout_rng(b * n * l * l)?),
            false => None,
        };
        let scale = ((h / n) as f64).powf(-0.5);
        let context = Var::fused_qkv_attention(&qkv, n, mask, scale, self.dropout.p, rng.as_mut())?;
        Ok(Some(context))
    }
}

impl Module for BertSelfAttention {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        self.query.visit_params(&join(prefix, "query"), f);
        self.key.visit_params(&join(prefix, "key"), f);
        self.value.visit_params(&join(prefix, "value"), f);
    }
}

/// `attention`: self-attention, then the output projection with the residual from its input.
pub struct BertAttention {
    pub self_attention: BertSelfAttention,
    pub output: BertSelfOutput,
}

impl BertAttention {
    pub fn new(c: &BertConfig, init: &mut Init) -> Result<BertAttention> {
        Ok(BertAttention {
            self_attention: BertSelfAttention::new(c, init)?,
            output: BertSelfOutput::new(c.hidden_size, c, init)?,
        })
    }

    pub fn forward(&self, x: &Var, mask: Option<&Tensor>, ctx: &mut Ctx) -> Result<Var> {
        let _m = tensor::profiler::module("attention");
        let context = self.self_attention.forward(x, mask, ctx)?;
        self.output.forward(&context, x, ctx)
    }
}

impl Module for BertAttention {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        self.self_attention.visit_params(&join(prefix, "self"), f);
        self.output.visit_params(&join(prefix, "output"), f);
    }
}
