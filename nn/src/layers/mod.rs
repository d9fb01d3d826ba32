//! The basic layers, with HF's parameter names (`weight`, `bias`) and BERT's initialisation
//! (normal with std `initializer_range`, zero bias, LayerNorm 1 and 0).

mod dropout;
mod embedding;
mod layer_norm;
mod linear;
mod side_by_side;

pub use dropout::Dropout;
pub use embedding::Embedding;
pub use layer_norm::LayerNorm;
pub use linear::{autocast_half, half_copy_product, half_input, Linear};
pub use side_by_side::SideBySide;
