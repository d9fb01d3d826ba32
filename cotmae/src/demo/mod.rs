//! `cotmae demo`: the whole method on generated data (see [`data`] for the task).

pub mod data;
