//! safetensors files: read through a memory map (zero-copy f32 tensors on the CPU) with the
//! header validated, and written atomically (temp file, fsync, rename). Filled in fully by the
//! BERT issue; the foundation needs it to read the committed PyTorch fixtures.
