//! Cross-entropy over classes with ignore_index, fused (log-softmax + NLL, mean over the rows
//! whose target is not ignored). The forward keeps each row's log-sum-exp for the backward.

use crate::var::Var;
use tensor::{DType, Result, Tensor};

impl Var {
    /// `self`: logits [N, C]; `targets`: I64 [N]. Returns the rank-0 mean loss. Half logits (an
    /// autocast product) are cast to f32 first, as torch's autocast runs the losses in f32; the
    /// loss is then f32 and their gradient comes back in their dtype.
    pub fn cross_entropy(&self, targets: &Tensor, ignore_index: i64) -> Result<Var> {
        if matches!(self.value().dtype(), DType::F16 | DType::BF16)
            && crate::autocast_dtype().is_some()
        {
            return self
                .to_dtype(DType::F32)?
                .cross_entropy(targets, ignore_index);
        }
        let logits = self.value().clone();
        let targets = targets.clone();
        let (loss, lse) = Tensor::cross_entropy(&logits, &targets, ignore_index)?;
        Ok(Var::from_op(
            "cross_entropy",
            loss,
            vec![self.clone()],
            // The loss gradient stays on the logits' device (no wait for the GPU).
            Box::new(move |g| {
                let d =
                    Tensor::cross_entropy_backward_by(&logits, &targets, &lse, ignore_index, g)?;
                Ok(vec![Some(d)])
            }),
        ))
    }
}
