//! Where a pull reads an image from: an OCI layout directory or a registry, behind one trait.

use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;

use crate::chunked::reader::{FileSource, RangeSource};
use crate::image::manifest::{Descriptor, MAX_MANIFEST_SIZE};
use crate::image::oci_layout::OciLayout;
use crate::image::reference::Reference;
use crate::ops::pull::PullError;
use crate::registry::client::Registry;
use crate::registry::resume::ResumingBlob;
use crate::registry::source::RegistrySource;

/// A [`RangeSource`] that can fetch many ranges ahead of reading them.
pub trait PrefetchSource: RangeSource {
    /// Fetches `ranges` so that later reads of them are local.
    fn prefetch(&self, ranges: &[Range<u64>]) -> io::Result<()>;
}

impl PrefetchSource for FileSource {
    fn prefetch(&self, _: &[Range<u64>]) -> io::Result<()> {
        Ok(())
    }
}

impl PrefetchSource for RegistrySource<'_> {
    fn prefetch(&self, ranges: &[Range<u64>]) -> io::Result<()> {
        RegistrySource::prefetch(self, ranges).map_err(|e| io::Error::other(e.to_string()))
    }
}

/// A source of images. Everything it returns is unverified: the pull verifies it.
pub trait ImageSource: Sync {
    /// The top-level manifest or index and its descriptor.
    fn root(&self) -> Result<(Vec<u8>, Descriptor), PullError>;
    /// A manifest named by an index.
    fn manifest(&self, desc: &Descriptor) -> Result<Vec<u8>, PullError>;
    /// A small blob (config), whole.
    fn blob_bytes(&self, desc: &Descriptor, limit: u64) -> Result<Vec<u8>, PullError>;
    /// A blob as a stream.
    fn blob_stream(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send + '_>, PullError>;
    /// A blob with random access; `spool` is an empty temp file a remote source may fill.
    fn ranges<'a>(
        &'a self,
        desc: &Descriptor,
        spool: File,
    ) -> Result<Box<dyn PrefetchSource + Send + 'a>, PullError>;
    /// Whether reading costs network transfer (decides partial versus whole downloads).
    fn is_remote(&self) -> bool;
}

/// An OCI layout and the tag to pull.
pub struct LayoutSource {
    pub layout: OciLayout,
    pub tag: Option<String>,
}

impl ImageSource for LayoutSource {
    fn root(&self) -> Result<(Vec<u8>, Descriptor), PullError> {
        let desc = self.layout.select(self.tag.as_deref())?.clone();
        let bytes = self.layout.read_blob(&desc.digest, MAX_MANIFEST_SIZE)?;
        Ok((bytes, desc))
    }
    fn manifest(&self, desc: &Descriptor) -> Result<Vec<u8>, PullError> {
        Ok(self.layout.read_blob(&desc.digest, MAX_MANIFEST_SIZE)?)
    }
    fn blob_bytes(&self, desc: &Descriptor, limit: u64) -> Result<Vec<u8>, PullError> {
        Ok(self.layout.read_blob(&desc.digest, limit)?)
    }
    fn blob_stream(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send + '_>, PullError> {
        Ok(Box::new(self.layout.open_blob(&desc.digest)?))
    }
    fn ranges<'a>(
        &'a self,
        desc: &Descriptor,
        _spool: File,
    ) -> Result<Box<dyn PrefetchSource + Send + 'a>, PullError> {
        Ok(Box::new(FileSource::new(
            self.layout.open_blob(&desc.digest)?,
        )))
    }
    fn is_remote(&self) -> bool {
        false
    }
}

/// A registry repository and the reference to pull.
pub struct RegistryImage {
    pub registry: Registry,
    pub reference: Reference,
}

impl ImageSource for RegistryImage {
    fn root(&self) -> Result<(Vec<u8>, Descriptor), PullError> {
        let r = &self.reference;
        let tag_or_digest = match (&r.digest, &r.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        };
        let (bytes, media_type, digest) =
            self.registry.get_manifest(&r.repository, &tag_or_digest)?;
        let desc = Descriptor {
            media_type,
            digest,
            size: bytes.len() as u64,
            annotations: Default::default(),
            platform: None,
        };
        Ok((bytes, desc))
    }
    fn manifest(&self, desc: &Descriptor) -> Result<Vec<u8>, PullError> {
        Ok(self
            .registry
            .get_manifest(&self.reference.repository, &desc.digest.to_string())?
            .0)
    }
    fn blob_bytes(&self, desc: &Descriptor, limit: u64) -> Result<Vec<u8>, PullError> {
        Ok(self.registry.get_small_blob(
            &self.reference.repository,
            &desc.digest,
            desc.size,
            limit,
        )?)
    }
    fn blob_stream(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send + '_>, PullError> {
        Ok(Box::new(ResumingBlob::open(
            &self.registry,
            &self.reference.repository,
            desc.digest,
            desc.size,
        )?))
    }
    fn ranges<'a>(
        &'a self,
        desc: &Descriptor,
        spool: File,
    ) -> Result<Box<dyn PrefetchSource + Send + 'a>, PullError> {
        Ok(Box::new(RegistrySource::new(
            &self.registry,
            &self.reference.repository,
            desc.digest,
            desc.size,
            spool,
        )))
    }
    fn is_remote(&self) -> bool {
        true
    }
}
