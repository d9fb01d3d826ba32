//! Lookups by integer index. Their backward scatters the gradient back to the rows that were
//! read, adding where an index repeats.

use crate::var::Var;
use half::{bf16, f16};
use tensor::{DType, Device, Result, Tensor, WithDType};

/// Zeroes row `row` of a 2-D float tensor: in place on the CPU, by one `masked_fill` with a
/// `[V, 1]` row mask (broadcast over the columns) on a GPU.
fn zero_row(t: &mut Tensor, row: usize) -> Result<()> {
    if t.device() != Device::Cpu {
        let mut rows = vec![0u8; t.shape()[0]];
        rows[row] = 1;
        let mask = Tensor::from_vec(rows, &[t.shape()[0], 1])?.to_device(t.device())?;
        *t = t.masked_fill(&mask, 0.0)?;
        return Ok(());
    }
    fn fill<T: WithDType>(t: &mut Tensor, row: usize) -> Result<()> {
        let h = t.shape()[1];
        t.data_mut::<T>()?[row * h..(row + 1) * h].fill(T::from_f64(0.0));
        Ok(())
    }
    match t.dtype() {
        DType::F32 => fill::<f32>(t, row),
        DType::F64 => fill::<f64>(t, row),
        DType::F16 => fill::<f16>(t, row),
        DType::BF16 => fill::<bf16>(t, row),
        dtype => Err(tensor::Error::UnsupportedDType {
            op: "embedding",
            dtype,
        }),
    }
}

impl Var {
    /// Rows of `self` (a [V, H] table) at `ids` (I64, any shape) -> ids.shape + [H]. The row
    /// `padding_idx`, if given, receives no gradient (torch's `nn.Embedding(padding_idx=...)`).
    pub fn embedding(&self, ids: &Tensor, padding_idx: Option<usize>) -> Result<Var> {
        let y = Tensor::embedding(self.value(), ids)?;
        let (ids, v) = (ids.clone(), self.shape()[0]);
        Ok(Var::from_op(
            "embedding",
            y,
            vec![self.clone()],
            Box::new(move |g| {
                let mut dw = Tensor::embedding_backward(&ids, g, v)?;
                if let Some(p) = padding_idx.filter(|&p| p < v) {
                    zero_row(&mut dw, p)?;
                }
                Ok(vec![Some(dw)])
            }),
        ))
    }

    pub fn index_select(&self, dim: usize, indices: &Tensor) -> Result<Var> {
        let y = self.value().index_select(dim, indices)?;
        let (indices, x) = (indices.clone(), self.value().clone());
        Ok(Var::from_op(
            "index_select",
            y,
            vec![self.clone()],
            Box::new(move |g| {
                let zeros = Tensor::zeros(x.shape(), g.dtype(), g.device())?;
                Ok(vec![Some(zeros.index_add(dim, &indices, g)?)])
            }),
        ))
    }

    pub fn gather(&self, dim: usize, index: &Tensor) -> Result<Var> {
        let y = self.value().gather(dim, index)?;
        let (index, x) = (index.clone(), self.value().clone());
        Ok(Var::from_op(
            "gather",
            y,
            vec![self.clone()],
            Box::new(move |g| {
                let zeros = Tensor::zeros(x.shape(), g.dtype(), g.device())?;
                Ok(vec![Some(zeros.scatter_add(dim, &index, g)?)])
            }),
        ))
    }
}
