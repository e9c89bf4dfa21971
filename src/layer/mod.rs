//! Layers: the tar format, tables of contents, the byte-exact skeleton of a tar, importing a
//! layer into the store and flattening a stack of layers into one tree.

pub mod entry;
pub mod flatten;
pub mod import;
pub mod skeleton;
pub mod tar;
