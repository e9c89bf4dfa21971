//! Progress reporting: the library reports events to a [`Progress`] implementation; the CLI
//! renders them (progress bars on a terminal, nothing otherwise).

/// Receives progress events from long operations. Every method has a do-nothing default.
pub trait Progress: Send + Sync {
    /// The operation waits for another zstore process (e.g. gc waits for running pulls).
    fn waiting(&self, _what: &str) {}
    /// A short status message (e.g. "resolving oci:/images:c1").
    fn message(&self, _msg: &str) {}
    /// Work on layer `index` (of `total`) starts; `size` is the blob size in bytes.
    fn layer_started(&self, _index: usize, _total: usize, _digest: &str, _size: u64) {}
    /// `bytes` more bytes of layer `index` were read.
    fn layer_advanced(&self, _index: usize, _bytes: u64) {}
    /// Layer `index` is done: `fetched` bytes read from the source, `skipped` bytes of the blob
    /// not needed (already in the store), of `size`.
    fn layer_finished(&self, _index: usize, _fetched: u64, _skipped: u64, _size: u64) {}
    /// A phase with `total` steps starts (checkout files, fsck objects, gc objects).
    fn phase_started(&self, _name: &str, _total: u64) {}
    /// `n` more steps of the current phase are done.
    fn phase_advanced(&self, _n: u64) {}
    /// The current phase is done.
    fn phase_finished(&self) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
