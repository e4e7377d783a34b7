//! `[object_store]`: the `object_store` crate (S3 and S3-compatible services, GCS,
//! Azure Blob, a local directory) behind the store's blocking [`Remote`] interface.
//!
//! The store calls from blocking threads (reads run in `spawn_blocking`, the offloader
//! and the Kafka consumer in their own threads). Requests run on a small runtime of
//! their own and the caller waits for the answer, so no caller ever needs to be inside
//! (or outside) the gateway's runtime. Timeouts and a short retry budget come from the
//! config: an unreachable service fails a request within `request_timeout`, not the
//! crate's default three minutes.

use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::TryStreamExt;
use logstream_model::config::ObjectStoreConfig;
use logstream_store::{Remote, RemoteError, RemoteObject};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig};

/// Objects above this size go up in parts (S3 takes one PUT up to 5 GiB, but a part
/// that fails is retried alone).
const MULTIPART_ABOVE: usize = 16 << 20;
const PART: usize = 8 << 20;

/// The configured bucket and prefix.
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    url: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for ObjectStorage {
    fn drop(&mut self) {
        // May be dropped inside the gateway's runtime, where blocking is not allowed.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// `NAME=value` lines (the provider's environment variable names; `#` comments).
fn credentials(path: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("object_store.credentials_file {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            bail!(
                "object_store.credentials_file {} line {}: expected NAME=value, e.g. AWS_ACCESS_KEY_ID=AKIA...",
                path.display(),
                n + 1
            );
        };
        out.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    Ok(out)
}

impl ObjectStorage {
    pub fn open(cfg: &ObjectStoreConfig) -> anyhow::Result<ObjectStorage> {
        let url = cfg.url.trim().trim_end_matches('/').to_owned();
        let (scheme, rest) = url
            .split_once("://")
            .context("object_store.url: not a URL")?;
        let timeout = cfg.request_timeout();
        let options = ClientOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(timeout.min(Duration::from_secs(5)))
            .with_allow_http(
                cfg.endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://")),
            );
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: timeout,
            ..RetryConfig::default()
        };
        let creds = match &cfg.credentials_file {
            Some(p) => credentials(p)?,
            None => Vec::new(),
        };
        let bad_key = |k: &str| {
            anyhow::anyhow!(
                "object_store.credentials_file: {k:?} is not a setting of {scheme}:// (use the provider's environment variable names)"
            )
        };
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, p.trim_matches('/')),
            None => (rest, ""),
        };
        let store: Arc<dyn ObjectStore> = match scheme {
            "s3" => {
                use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_client_options(options)
                    .with_retry(retry);
                let region_given = cfg.region.is_some()
                    || std::env::var_os("AWS_REGION").is_some()
                    || std::env::var_os("AWS_DEFAULT_REGION").is_some()
                    || creds
                        .iter()
                        .any(|(k, _)| k == "aws_region" || k == "aws_default_region");
                if !region_given {
                    b = b.with_region("us-east-1");
                }
                for (k, v) in creds {
                    b = b.with_config(AmazonS3ConfigKey::from_str(&k).map_err(|_| bad_key(&k))?, v);
                }
                if let Some(r) = &cfg.region {
                    b = b.with_region(r);
                }
                if let Some(e) = &cfg.endpoint {
                    b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
                }
                Arc::new(b.build().context("object_store")?)
            }
            "gs" => {
                use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
                let mut b = GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_client_options(options)
                    .with_retry(retry);
                for (k, v) in creds {
                    b = b.with_config(GoogleConfigKey::from_str(&k).map_err(|_| bad_key(&k))?, v);
                }
                Arc::new(b.build().context("object_store")?)
            }
            "az" => {
                use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
                let mut b = MicrosoftAzureBuilder::from_env()
                    .with_container_name(bucket)
                    .with_client_options(options)
                    .with_retry(retry);
                for (k, v) in creds {
                    b = b.with_config(AzureConfigKey::from_str(&k).map_err(|_| bad_key(&k))?, v);
                }
                Arc::new(b.build().context("object_store")?)
            }
            "file" => {
                let dir = std::path::Path::new(&url["file://".len()..]);
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("object_store.url: creating {}", dir.display()))?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(dir)
                        .context("object_store.url")?,
                )
            }
            other => bail!("object_store.url: {other}:// is not supported"),
        };
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() || scheme == "file" {
            store
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("object-store")
            .enable_all()
            .build()
            .context("starting the object storage runtime")?;
        Ok(ObjectStorage {
            store,
            url,
            runtime: Some(runtime),
        })
    }

    /// Runs a request on the storage runtime and waits for it, from any thread.
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, object_store::Error>> + Send + 'static,
    ) -> Result<T, RemoteError> {
        let rt = self.runtime.as_ref().expect("runtime lives until drop");
        match futures::executor::block_on(rt.spawn(fut)) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(object_store::Error::NotFound { .. })) => Err(RemoteError::NotFound),
            Ok(Err(e)) => Err(RemoteError::Unavailable(e.to_string())),
            Err(e) => Err(RemoteError::Unavailable(format!(
                "request task failed: {e}"
            ))),
        }
    }
}

impl Remote for ObjectStorage {
    fn put(&self, key: &str, data: &[u8]) -> Result<(), RemoteError> {
        let store = self.store.clone();
        let path = ObjectPath::from(key);
        let data = bytes::Bytes::copy_from_slice(data);
        self.run(async move {
            if data.len() <= MULTIPART_ABOVE {
                store.put(&path, PutPayload::from(data)).await?;
            } else {
                // Parts one by one; a failure aborts the upload, so no incomplete
                // multipart upload (invisible to listings, still billed) is left.
                let mut upload = store.put_multipart(&path).await?;
                let mut parts = Ok(());
                for start in (0..data.len()).step_by(PART) {
                    let part = data.slice(start..(start + PART).min(data.len()));
                    if let Err(e) = upload.put_part(PutPayload::from(part)).await {
                        parts = Err(e);
                        break;
                    }
                }
                let done = match parts {
                    Ok(()) => upload.complete().await.map(|_| ()),
                    Err(e) => Err(e),
                };
                if let Err(e) = done {
                    let _ = upload.abort().await;
                    return Err(e);
                }
            }
            Ok(())
        })
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, RemoteError> {
        let store = self.store.clone();
        let path = ObjectPath::from(key);
        self.run(async move { Ok(store.get(&path).await?.bytes().await?.to_vec()) })
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, RemoteError> {
        let store = self.store.clone();
        let path = ObjectPath::from(key);
        self.run(async move { Ok(store.get_range(&path, range).await?.to_vec()) })
    }

    fn delete(&self, key: &str) -> Result<(), RemoteError> {
        let store = self.store.clone();
        let path = ObjectPath::from(key);
        match self.run(async move { store.delete(&path).await }) {
            Err(RemoteError::NotFound) => Ok(()),
            r => r,
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<RemoteObject>, RemoteError> {
        let store = self.store.clone();
        let prefix = ObjectPath::from(prefix);
        self.run(async move {
            let metas: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
            Ok(metas
                .into_iter()
                .map(|m| RemoteObject {
                    key: m.location.to_string(),
                    size: m.size,
                    last_modified: m.last_modified.timestamp_nanos_opt().unwrap_or(i64::MAX),
                })
                .collect())
        })
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}
