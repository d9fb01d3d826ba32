//! The loss and the parameter gradients of one rank's micro-batch of `train-retriever`, added to
//! the step's gradient sums (`nn::StepGrads`), before clipping: [`loss_and_grads`]. Two of
//! Tevatron's options change how they are computed, never what a one-process full batch would
//! give. The step's last backward pass (the last micro-batch's, or with the gradient cache its
//! last chunk's re-encode) runs overlapped with the data-parallel all-reduce of the sums.
//!
//! Cross-device negatives (`--negatives_x_device`, Tevatron's `DenseModel`): each rank encodes its
//! `Q` queries and `Q * n` passages, then all-gathers both ([`nn::all_gather()`]: every rank's rows
//! in rank order; only its own rows keep their gradient), so every query scores every rank's
//! passages:
//!
//! ```text
//! q [world*Q, H], p [world*Q*n, H] -> scores [world*Q, world*Q*n]; target of global query i = i*n
//! loss = mean cross-entropy over the world*Q queries   (the same value on every rank)
//! backward from world * loss                           (Tevatron: "counter average weight reduction")
//! ```
//!
//! Rank r's gradient is `world` times what the global loss sends through its own vectors; the
//! data-parallel mean over ranks (`nn::StepGrads::finish`) then sums those shares: the gradient of
//! the global loss, what one process computes over the global batch. The loss returned is the
//! unscaled global loss (Tevatron's trainer divides the scaled one back for its logs).
//!
//! Gradient cache (`--grad_cache --gc_q_chunk_size --gc_p_chunk_size`, Tevatron's `GCTrainer`
//! with Gao et al.'s GradCache): memory bounded by a chunk instead of the batch, in three passes:
//!
//! 1. encode the queries and the passages chunk by chunk without a graph: the vectors only;
//! 2. the loss (cross-device as above when asked) over the whole batch of vectors, as leaves,
//!    and its gradient with respect to every vector;
//! 3. re-encode chunk by chunk with the graph and back-propagate each chunk's slice of those
//!    vector gradients; the parameter gradients of the chunks add up (into the step's running
//!    sums, chunk after chunk; the last chunk's backward overlaps the all-reduce).
//!
//! By the chain rule the sum is the full batch's gradient; the only condition is that both
//! passes compute the same vectors, so dropout must draw the same masks: each chunk's forward
//! starts from the generator state the whole batch's encode started from and draws its rows of
//! the whole batch's masks (`nn::BatchRows`), in both passes.
//!
//! Dropout by global row: the global batch of a micro-step is every rank's micro-batch, in rank
//! order (ranks pass batches of the same size). Every rank encodes its rows of it with the same
//! generator state and draws those rows' masks ([`nn::BatchRows`]), and the generator moves on as
//! far as one process would move it over the global batch, whatever the world size and the
//! chunks: so N ranks, or chunks, draw the masks one process draws over the whole batch.

use autograd::{no_grad, Var};
use nn::{all_gather, BatchRows, Communicator, Ctx, Precision, StepGrads};
use tensor::{DType, Rng, Tensor};

use crate::dense::{contrastive_loss, DenseModel, TokenBatch};
use crate::{Error, Result};

/// Tevatron's `--grad_cache` chunk sizes: how many queries and how many passages one encoder
/// pass holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GradCacheChunks {
    pub gc_q_chunk_size: usize,
    pub gc_p_chunk_size: usize,
}

/// How one micro-batch's loss and gradients are computed (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepOptions {
    /// Score every rank's passages (Tevatron's `--negatives_x_device`); no effect with one rank.
    pub negatives_x_device: bool,
    /// Encode in chunks with the gradient cache (Tevatron's `--grad_cache`).
    pub grad_cache: Option<GradCacheChunks>,
    /// The autocast of the forward passes (mixed precision).
    pub precision: Precision,
}

/// Where one micro-batch's backward passes go.
pub struct MicroBatchBackward<'a> {
    /// The step's gradient sums (and, on its last backward pass, their all-reduce).
    pub grads: &'a mut StepGrads,
    /// The gradients are those of `loss_scale` times the loss that is back-propagated (the fp16
    /// loss scaler's scale times the micro-batch's weight in the step; 1 otherwise).
    pub loss_scale: f64,
    /// The step's last micro-batch on this rank: its last backward pass is the step's.
    pub last: bool,
}

/// The loss of this rank's micro-batch (`query` [Q, q_len], `passages` [Q*n, p_len], every rank
/// of `comm` passing the same sizes), its gradients added to `backward.grads` (see
/// [`MicroBatchBackward`]). The loss is the one to log: the mean cross-entropy of this rank's
/// queries, or of every rank's with cross-device negatives (unscaled). Dropout draws from `ctx`
/// by global row (module docs); afterwards `ctx.rng` has moved past the global batch's draws.
pub fn loss_and_grads(
    model: &DenseModel,
    query: &TokenBatch,
    passages: &TokenBatch,
    ctx: &mut Ctx,
    opts: &StepOptions,
    comm: &dyn Communicator,
    backward: MicroBatchBackward,
) -> Result<f64> {
    let (q, p) = (query.len(), passages.len());
    if q == 0 || !p.is_multiple_of(q) {
        return Err(Error::Config(format!(
            "train step: {p} passages for {q} queries (expected a positive multiple)"
        )));
    }
    let (rank, world) = (comm.rank(), comm.world_size());
    let (q_chunk, p_chunk) = match opts.grad_cache {
        None => (q, p),
        Some(c) if c.gc_q_chunk_size == 0 || c.gc_p_chunk_size == 0 => {
            return Err(Error::Config(
                "gc_q_chunk_size and gc_p_chunk_size must be at least 1".into(),
            ))
        }
        Some(c) => (c.gc_q_chunk_size, c.gc_p_chunk_size),
    };
    let sides = [
        Encoding::new(query, GlobalRows::of_rank(q, rank, world), q_chunk),
        Encoding::new(passages, GlobalRows::of_rank(p, rank, world), p_chunk),
    ];
    let loss = Loss {
        comm,
        x_device: opts.negatives_x_device && world > 1,
        precision: opts.precision,
        scale: backward.loss_scale,
    };
    let result = match opts.grad_cache {
        None => whole_batch(model, sides, ctx, &loss, backward),
        Some(_) => grad_cache(model, sides, ctx, &loss, backward),
    };
    ctx.rows = None;
    result
}

/// Where a rank's rows sit in the global batch: rows `start..start + len` of `total`.
#[derive(Clone, Copy, Debug)]
struct GlobalRows {
    start: usize,
    total: usize,
}

impl GlobalRows {
    /// Rank `rank`'s `len` rows of `world` equal parts.
    fn of_rank(len: usize, rank: usize, world: usize) -> GlobalRows {
        GlobalRows {
            start: rank * len,
            total: world * len,
        }
    }

    /// The dropout keying of local rows `local.start..local.end` (None: the whole global batch,
    /// which draws as a plain forward does).
    fn part(self, local: std::ops::Range<usize>) -> Result<Option<BatchRows>> {
        let len = local.end - local.start;
        if len == self.total {
            return Ok(None);
        }
        Ok(Some(BatchRows::new(
            self.start + local.start,
            len,
            self.total,
        )?))
    }
}

/// How the loss over a micro-batch's vectors is formed and back-propagated.
struct Loss<'a> {
    comm: &'a dyn Communicator,
    /// Gather every rank's vectors (cross-device negatives with more than one rank).
    x_device: bool,
    precision: Precision,
    /// The fp16 loss scaler's scale (1 otherwise).
    scale: f64,
}

impl Loss<'_> {
    /// The loss to back-propagate (scaled by the world size with cross-device negatives) and
    /// the loss to log, over this rank's vectors `q_reps` [Q, H] and `p_reps` [Q*n, H].
    fn over(&self, q_reps: &Var, p_reps: &Var) -> Result<(Var, f64)> {
        let (q_all, p_all) = match self.x_device {
            true => (
                all_gather(self.comm, q_reps)?,
                all_gather(self.comm, p_reps)?,
            ),
            false => (q_reps.clone(), p_reps.clone()),
        };
        let (_, loss) = contrastive_loss(&q_all, &p_all)?;
        let logged = loss.value().to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let backward = match self.x_device {
            true => loss.mul_scalar(self.comm.world_size() as f64)?,
            false => loss,
        };
        Ok((backward, logged))
    }

    /// `loss` times the loss scale.
    fn scaled(&self, loss: Var) -> Result<Var> {
        if self.scale == 1.0 {
            Ok(loss)
        } else {
            Ok(loss.mul_scalar(self.scale)?)
        }
    }
}

/// The plain path: both sides encoded whole with the graph, the loss, one backward.
fn whole_batch(
    model: &DenseModel,
    mut sides: [Encoding; 2],
    ctx: &mut Ctx,
    loss: &Loss,
    backward: MicroBatchBackward,
) -> Result<f64> {
    let (value, logged) = loss.precision.autocast(|| -> Result<(Var, f64)> {
        let mut reps = Vec::new();
        for side in sides.iter_mut() {
            side.start = ctx.rng;
            reps.push(side.encode_chunk(model, 0, ctx)?);
        }
        loss.over(&reps[0], &reps[1])
    })?;
    let scaled = loss.scaled(value)?;
    backward
        .grads
        .backward(loss.comm, &scaled, None, backward.last)?;
    Ok(logged)
}

/// One side (queries or passages) of a gradient-cache step: the batch, where its rows sit
/// globally, its chunks, and the generator state its encode starts from.
struct Encoding<'a> {
    batch: &'a TokenBatch,
    rows: GlobalRows,
    chunks: Vec<std::ops::Range<usize>>,
    start: Rng,
}

impl<'a> Encoding<'a> {
    fn new(batch: &'a TokenBatch, rows: GlobalRows, chunk_size: usize) -> Encoding<'a> {
        let n = batch.len();
        let chunks = (0..n)
            .step_by(chunk_size)
            .map(|a| a..(a + chunk_size).min(n))
            .collect();
        Encoding {
            batch,
            rows,
            chunks,
            start: Rng::new(0),
        }
    }

    /// Encodes chunk `c` from the side's starting generator state, drawing its rows' masks.
    fn encode_chunk(&self, model: &DenseModel, c: usize, ctx: &mut Ctx) -> Result<Var> {
        let range = self.chunks[c].clone();
        let part = TokenBatch {
            input_ids: self.batch.input_ids.narrow(0, range.start, range.len())?,
            attention_mask: self
                .batch
                .attention_mask
                .narrow(0, range.start, range.len())?,
        };
        ctx.rng = self.start;
        ctx.rows = self.rows.part(range)?;
        model.encode(&part, ctx)
    }
}

/// The three passes of the module docs over `sides` = [queries, passages].
fn grad_cache(
    model: &DenseModel,
    mut sides: [Encoding; 2],
    ctx: &mut Ctx,
    loss: &Loss,
    backward: MicroBatchBackward,
) -> Result<f64> {
    // 1. Vectors without a graph; each side starts where the previous one's whole draw ended.
    let mut reps: Vec<Var> = Vec::new();
    for side in sides.iter_mut() {
        side.start = ctx.rng;
        let mut end = ctx.rng;
        let mut parts = Vec::new();
        for c in 0..side.chunks.len() {
            let v = no_grad(|| loss.precision.autocast(|| side.encode_chunk(model, c, ctx)))?;
            parts.push(v.into_value());
            end = ctx.rng;
        }
        ctx.rng = end;
        let parts: Vec<&Tensor> = parts.iter().collect();
        reps.push(Var::param(Tensor::cat(&parts, 0)?));
    }
    let after = ctx.rng;
    // 2. The loss over the vectors, and its gradient with respect to them.
    let (value, logged) = loss.precision.autocast(|| loss.over(&reps[0], &reps[1]))?;
    let mut rep_grads = loss.scaled(value)?.backward()?;
    // 3. Re-encode with the graph, chunk by chunk, and back-propagate the vectors' gradients;
    // the last chunk's backward is this micro-batch's last.
    let mut chunks = Vec::new();
    for (s, (side, rep)) in sides.iter().zip(&reps).enumerate() {
        if let Some(g) = rep_grads.remove(rep) {
            for (c, range) in side.chunks.iter().enumerate() {
                chunks.push((s, c, g.narrow(0, range.start, range.len())?));
            }
        }
    }
    let n = chunks.len();
    for (i, (s, c, slice)) in chunks.into_iter().enumerate() {
        let v = loss
            .precision
            .autocast(|| sides[s].encode_chunk(model, c, ctx))?;
        let seed = slice.to_dtype(v.value().dtype())?;
        let last = backward.last && i + 1 == n;
        backward.grads.backward(loss.comm, &v, Some(seed), last)?;
    }
    ctx.rng = after;
    Ok(logged)
}
