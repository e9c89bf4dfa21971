//! Images: references, manifests and configs, platforms, OCI layout directories.

pub mod manifest;
pub mod oci_layout;
pub mod platform;
pub mod reference;
