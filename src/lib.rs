//! zstore: a content-addressed, deduplicating store for container images.
//!
//! - [`layer`]: the tar format, tables of contents, tar skeletons, layer import and flattening;
//! - [`image`]: references, manifests, configs, platforms, OCI layout directories;
//! - [`store`]: objects on disk, the store lock, checkout, gc, fsck, df;
//! - [`db`]: the metadata database (redb);
//! - [`ops`]: pull, export, images/inspect/rm;
//! - [`progress`]: the trait through which long operations report progress;
//! - [`sys`]: every system call beyond `std::fs`.
//!
//! The library has no CLI concerns: the `zstore` binary parses arguments and renders output.

pub mod chunked;
pub mod db;
pub mod digest;
pub mod image;
pub mod layer;
pub mod ops;
pub mod progress;
pub mod registry;
pub mod store;
pub mod sys;
#[doc(hidden)]
pub mod testhook;
