//! Artifact bytes: screenshots, videos, logs, outputs and files, stored per
//! execution under `<execution uuid>/<name>`.
//!
//! The index of artifacts lives in the [`crate::Store`]; the bytes live in an
//! [`ArtifactStore`]: [`LocalArtifactStore`] keeps them in a directory, and
//! (feature `s3`) [`s3::S3ArtifactStore`] in an S3-compatible bucket, both
//! through `object_store`.

#[cfg(feature = "s3")]
pub mod s3;

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

/// The source of an artifact's bytes.
pub type ArtifactReader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// Where artifact bytes live.
#[async_trait]
pub trait ArtifactStore: Send + Sync + 'static {
    /// Stores what `reader` yields as artifact `name`, streamed (never
    /// whole in memory); returns its size. The caller opens the source: a
    /// file of a sandbox is opened without following links (see the worker's
    /// `sandbox_files`), never by a path this store would follow.
    async fn put_reader(&self, execution: Uuid, name: &str, reader: ArtifactReader) -> anyhow::Result<u64>;
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
    /// A URL that serves the artifact directly for `ttl` without further
    /// credentials (a presigned S3 URL), or `None` when the bytes must be
    /// served through [`ArtifactStore::open`].
    async fn presigned_url(
        &self,
        _execution: Uuid,
        _name: &str,
        _ttl: std::time::Duration,
    ) -> anyhow::Result<Option<String>> {
        Ok(None)
    }
}

/// The Content-Type an artifact is stored and served with, from its name.
pub fn content_type_for(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "json" => "application/json",
        "jsonl" => "application/x-ndjson",
        "txt" | "log" => "text/plain; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// The Content-Disposition of an artifact: media, JSON, text and PDF show
/// in the browser; anything else (a file a page offered for download, which
/// could be HTML or a script) is only ever downloaded.
pub fn content_disposition_for(name: &str, content_type: &str) -> String {
    let inline = ["image/", "video/", "application/json", "text/plain", "application/x-ndjson", "application/pdf"]
        .iter()
        .any(|p| content_type.starts_with(p));
    format!("{}; filename=\"{name}\"", if inline { "inline" } else { "attachment" })
}

/// Opens `path` of `store`, optionally a byte range of it.
async fn open_object(
    store: &dyn ObjectStore,
    path: &ObjectPath,
    name: &str,
    range: Option<std::ops::Range<u64>>,
) -> anyhow::Result<ArtifactBody> {
    let options = GetOptions { range: range.map(GetRange::Bounded), ..Default::default() };
    let result = store.get_opts(path, options).await.with_context(|| format!("could not open artifact {name}"))?;
    let size = result.meta.size;
    let range = result.range.clone();
    let stream = result.into_stream().map(|chunk| chunk.map_err(std::io::Error::other)).boxed();
    Ok(ArtifactBody { size, range, stream })
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
    async fn put_reader(&self, execution: Uuid, name: &str, mut reader: ArtifactReader) -> anyhow::Result<u64> {
        let target = self.root.join(execution.to_string());
        anyhow::ensure!(is_safe_name(name), "invalid artifact name {name:?}");
        tokio::fs::create_dir_all(&target).await.with_context(|| format!("could not create {}", target.display()))?;
        // Written aside and renamed into place, so a reader never sees half a file.
        let partial = target.join(format!(".{name}.{}.partial", Uuid::now_v7().simple()));
        let copied = async {
            let mut file = tokio::fs::File::create(&partial).await?;
            let size = tokio::io::copy(&mut reader, &mut file).await?;
            file.sync_data().await?;
            tokio::fs::rename(&partial, target.join(name)).await?;
            Ok::<u64, std::io::Error>(size)
        }
        .await;
        if copied.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        copied.with_context(|| format!("could not store artifact {name}"))
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
        open_object(self.store.as_ref(), &path, name, range).await
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
