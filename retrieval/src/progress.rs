//! Labelled progress bars for the data, search and evaluation stages, on top of
//! [`crate::progress_bar`] (stderr, hidden when stderr is not a terminal).

use indicatif::ProgressBar;

/// A bar counting `len` items.
pub fn item_bar(len: u64, msg: impl Into<String>) -> ProgressBar {
    let bar = crate::progress_bar(
        len,
        true,
        "{msg} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} (eta {eta})",
    );
    bar.set_message(msg.into());
    bar
}

/// A bar counting `len` bytes of a file being read.
pub fn bytes_bar(len: u64, msg: impl Into<String>) -> ProgressBar {
    let bar = crate::progress_bar(
        len,
        true,
        "{msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
    );
    bar.set_message(msg.into());
    bar
}
