//! Artifacts in an S3-compatible bucket: `--artifacts s3://bucket/prefix`.
//!
//! Objects are `<prefix>/<execution uuid>/<name>`, stored with their
//! Content-Type and Content-Disposition, so a presigned URL (what downloads
//! redirect to) serves them as the API would. The endpoint, region and
//! credentials come from the environment, as for every AWS tool:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, and for other
//! S3-compatible servers `AWS_ENDPOINT` (plus `AWS_ALLOW_HTTP=true` for a
//! plain-HTTP one).

use super::{
    content_disposition_for, content_type_for, is_safe_name, open_object, ArtifactBody, ArtifactReader, ArtifactStore,
};
use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{Attribute, Attributes, ObjectStore, PutOptions, PutPayload};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

/// Parts of large files (videos) are uploaded this big, several at once.
const UPLOAD_PART_BYTES: usize = 8 << 20;

pub struct S3ArtifactStore {
    s3: Arc<AmazonS3>,
    /// Without leading or trailing slashes; may be empty.
    prefix: String,
}

/// What a failed first request to the bucket most likely means, in one line.
fn explain_bucket_error(bucket: &str, err: &object_store::Error) -> String {
    let text = err.to_string();
    let has = |needle: &str| text.contains(needle);
    if has("NoSuchBucket") {
        format!("there is no bucket {bucket} at that endpoint: create it first")
    } else if has("SignatureDoesNotMatch") || has("InvalidAccessKeyId") || has("AccessDenied") || has("403") {
        "the server refused the credentials: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".to_owned()
    } else if has("builder error") {
        "the request could not be made: a plain-HTTP AWS_ENDPOINT needs AWS_ALLOW_HTTP=true".to_owned()
    } else {
        let first_line: String = text.lines().next().unwrap_or_default().chars().take(300).collect();
        format!(
            "{first_line} (check AWS_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
             and AWS_ALLOW_HTTP=true for a plain-HTTP endpoint)"
        )
    }
}

impl S3ArtifactStore {
    /// Connects to `s3://bucket[/prefix]` and checks that the bucket can be
    /// listed, so a wrong endpoint, bucket or key fails at startup, not at
    /// the first screenshot.
    pub async fn connect(url: &str) -> anyhow::Result<S3ArtifactStore> {
        let rest = url.strip_prefix("s3://").with_context(|| format!("{url} is not an s3://bucket/prefix URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        anyhow::ensure!(!bucket.is_empty(), "{url} names no bucket: use s3://bucket or s3://bucket/prefix");
        let s3 = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .with_context(|| format!("could not configure the artifacts bucket {url}"))?;
        let store = S3ArtifactStore { s3: Arc::new(s3), prefix: prefix.trim_matches('/').to_owned() };
        let root = (!store.prefix.is_empty()).then(|| ObjectPath::from(store.prefix.as_str()));
        if let Err(err) = store.s3.list_with_delimiter(root.as_ref()).await {
            anyhow::bail!("cannot use the artifacts bucket {url}: {}", explain_bucket_error(bucket, &err));
        }
        Ok(store)
    }

    fn execution_dir(&self, execution: Uuid) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(execution.to_string())
        } else {
            ObjectPath::from(format!("{}/{execution}", self.prefix))
        }
    }

    fn object_path(&self, execution: Uuid, name: &str) -> anyhow::Result<ObjectPath> {
        anyhow::ensure!(is_safe_name(name), "invalid artifact name {name:?}");
        Ok(self.execution_dir(execution).child(name))
    }

    fn attributes(name: &str) -> Attributes {
        let content_type = content_type_for(name);
        Attributes::from_iter([
            (Attribute::ContentType, content_type.to_owned()),
            (Attribute::ContentDisposition, content_disposition_for(name, content_type)),
        ])
    }
}

#[async_trait]
impl ArtifactStore for S3ArtifactStore {
    async fn put_reader(&self, execution: Uuid, name: &str, mut file: ArtifactReader) -> anyhow::Result<u64> {
        let object = self.object_path(execution, name)?;
        let store: Arc<dyn ObjectStore> = self.s3.clone();
        let mut upload =
            BufWriter::with_capacity(store, object, UPLOAD_PART_BYTES).with_attributes(Self::attributes(name));
        let copied = match tokio::io::copy(&mut file, &mut upload).await {
            Ok(size) => upload.shutdown().await.map(|()| size),
            Err(err) => Err(err),
        };
        match copied {
            Ok(size) => Ok(size),
            Err(err) => {
                let _ = upload.abort().await;
                Err(err).with_context(|| format!("could not upload artifact {name}"))
            }
        }
    }

    async fn put_bytes(&self, execution: Uuid, name: &str, bytes: Bytes) -> anyhow::Result<()> {
        let object = self.object_path(execution, name)?;
        let options = PutOptions { attributes: Self::attributes(name), ..Default::default() };
        self.s3
            .put_opts(&object, PutPayload::from_bytes(bytes), options)
            .await
            .with_context(|| format!("could not upload artifact {name}"))?;
        Ok(())
    }

    async fn open(
        &self,
        execution: Uuid,
        name: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> anyhow::Result<ArtifactBody> {
        let object = self.object_path(execution, name)?;
        open_object(self.s3.as_ref(), &object, name, range).await
    }

    async fn delete_execution(&self, execution: Uuid) -> anyhow::Result<()> {
        let dir = self.execution_dir(execution);
        let objects = self.s3.list(Some(&dir)).map_ok(|meta| meta.location).boxed();
        self.s3
            .delete_stream(objects)
            .try_collect::<Vec<_>>()
            .await
            .with_context(|| format!("could not delete the artifacts of {execution}"))?;
        Ok(())
    }

    async fn presigned_url(&self, execution: Uuid, name: &str, ttl: Duration) -> anyhow::Result<Option<String>> {
        let object = self.object_path(execution, name)?;
        let url = self
            .s3
            .signed_url(http::Method::GET, &object, ttl)
            .await
            .with_context(|| format!("could not presign a URL for artifact {name}"))?;
        Ok(Some(url.to_string()))
    }
}
