//! Limits on configuration input, checked on the raw text before the YAML parser sees it:
//! its size here, its nesting and nodes per document by [`dataplane::yaml_shape`] (the
//! ztunnel's local config is held to the same).

pub use dataplane::yaml_shape::{MAX_DEPTH, MAX_NODES};
pub(super) use dataplane::yaml_shape::{Oversized, oversized};

/// The largest file (or stdin) read as configuration: 64 MiB. Checked on the file's size
/// before it is read, and again while reading. At ~275 bytes of YAML per Pod that is some
/// 240,000 pods in one file; a cluster larger than that is split into several files.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Why a file or text of `size` bytes is refused.
pub(super) fn too_large(size: u64) -> String {
    format!(
        "{size} bytes, over the limit of {} MiB for one file; split it",
        MAX_FILE_BYTES >> 20
    )
}
