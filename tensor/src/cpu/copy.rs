//! Strided gather: materialises any layout into a fresh row-major vector.

use crate::Layout;

/// The elements `layout` selects from `src`, in row-major order.
pub fn gather_strided<T: Copy>(src: &[T], layout: &Layout) -> Vec<T> {
    let mut out = Vec::with_capacity(layout.elem_count());
    layout.for_each_block(|start, len, stride| {
        if stride == 1 {
            out.extend_from_slice(&src[start..start + len]);
        } else {
            out.extend((0..len).map(|i| src[start + i * stride]));
        }
    });
    out
}
