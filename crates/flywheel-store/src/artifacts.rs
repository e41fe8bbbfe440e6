//! Artifact bytes: screenshots, videos, logs, outputs and files, stored per
//! execution under `<execution uuid>/<name>`.
//!
//! The index of artifacts lives in the [`crate::Store`]; the bytes live in an
//! [`ArtifactStore`]. [`LocalArtifactStore`] keeps them in a directory through
//! `object_store`, so an S3 bucket can take its place without changing callers.

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

/// The bytes of an artifact, streamed.
pub struct ArtifactBody {
    /// Total size of the artifact.
    pub size: u64,
    /// The byte range being returned (inclusive start, exclusive end).
    pub range: std::ops::Range<u64>,
    pub stream: BoxStream<'static, std::io::Result<Bytes>>,
}

/// Where artifact bytes live.
#[async_trait]
pub trait ArtifactStore: Send + Sync + 'static {
    /// Stores the file at `path` as artifact `name`; returns its size.
    async fn put_file(&self, execution: Uuid, name: &str, path: &Path) -> anyhow::Result<u64>;
    /// Stores `bytes` as artifact `name`.
    async fn put_bytes(&self, execution: Uuid, name: &str, bytes: Bytes) -> anyhow::Result<()>;
    /// Opens an artifact, optionally a byte range of it (for video seeking).
    async fn open(
        &self,
        execution: Uuid,
        name: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> anyhow::Result<ArtifactBody>;
    /// Deletes every artifact of an execution.
    async fn delete_execution(&self, execution: Uuid) -> anyhow::Result<()>;
}

/// Artifacts in a local directory.
pub struct LocalArtifactStore {
    root: PathBuf,
    store: Arc<LocalFileSystem>,
}

impl LocalArtifactStore {
    pub fn new(root: &Path) -> anyhow::Result<LocalArtifactStore> {
        std::fs::create_dir_all(root).with_context(|| format!("could not create {}", root.display()))?;
        let store = LocalFileSystem::new_with_prefix(root)
            .with_context(|| format!("could not use {} for artifacts", root.display()))?;
        Ok(LocalArtifactStore { root: root.to_owned(), store: Arc::new(store) })
    }

    fn object_path(execution: Uuid, name: &str) -> anyhow::Result<ObjectPath> {
        anyhow::ensure!(is_safe_name(name), "invalid artifact name {name:?}");
        Ok(ObjectPath::from(format!("{execution}/{name}")))
    }
}

/// Artifact names are single path segments of ordinary characters.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+' | '@'))
}

#[async_trait]
impl ArtifactStore for LocalArtifactStore {
    async fn put_file(&self, execution: Uuid, name: &str, path: &Path) -> anyhow::Result<u64> {
        let target = self.root.join(execution.to_string());
        anyhow::ensure!(is_safe_name(name), "invalid artifact name {name:?}");
        tokio::fs::create_dir_all(&target).await.with_context(|| format!("could not create {}", target.display()))?;
        // On one file system a copy is all object_store would do too, without
        // holding the file in memory.
        let size = tokio::fs::copy(path, target.join(name))
            .await
            .with_context(|| format!("could not store artifact {name} from {}", path.display()))?;
        Ok(size)
    }

    async fn put_bytes(&self, execution: Uuid, name: &str, bytes: Bytes) -> anyhow::Result<()> {
        let path = Self::object_path(execution, name)?;
        self.store
            .put(&path, PutPayload::from_bytes(bytes))
            .await
            .with_context(|| format!("could not store artifact {name}"))?;
        Ok(())
    }

    async fn open(
        &self,
        execution: Uuid,
        name: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> anyhow::Result<ArtifactBody> {
        let path = Self::object_path(execution, name)?;
        let options = GetOptions { range: range.clone().map(GetRange::Bounded), ..Default::default() };
        let result =
            self.store.get_opts(&path, options).await.with_context(|| format!("could not open artifact {name}"))?;
        let size = result.meta.size;
        let range = result.range.clone();
        let stream = result.into_stream().map(|chunk| chunk.map_err(std::io::Error::other)).boxed();
        Ok(ArtifactBody { size, range, stream })
    }

    async fn delete_execution(&self, execution: Uuid) -> anyhow::Result<()> {
        let dir = self.root.join(execution.to_string());
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("could not delete {}", dir.display())),
        }
    }
}
