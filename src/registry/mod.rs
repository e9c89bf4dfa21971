//! OCI distribution registries: an HTTP client with authentication and retries, range
//! requests for partial pulls, and uploads for push.

pub mod auth;
pub mod client;
pub mod ranges;
pub mod resume;
pub mod source;
