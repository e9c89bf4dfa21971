//! Operations that span images, layers and the store (one module per command family).

pub mod export;
pub mod images;
pub mod layer_import;
pub mod pull;
pub mod push;
pub mod read_ahead;
pub mod source;
