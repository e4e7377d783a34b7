//! Export links (issue 24): URLs that download a deployment's export without a token,
//! until they expire, like presigned object URLs.
//!
//! A link is `/v1/shared/{tenant}/{deployment}/export?format=..&<filters>&exp=<unix s>&
//! sub=<creator>&sig=<hex>`; `sig` is a keyed BLAKE3 MAC (key derived from the gateway's
//! signing key, which stores and edges share) of the path and the other parameters in
//! sorted order, so changing any of them (the format, a filter, the expiry, the
//! deployment) makes it invalid (403 `invalid_signature`), as does time (403
//! `link_expired`).
//!
//! A sealed deployment's export is rendered once per format and filter into
//! `<data_dir>/export-cache/<tenant>/<deployment>/` with its BLAKE3 as the strong ETag, so
//! ranges and revalidations are served from one immutable file. A hotfix redaction or a
//! deletion removes the deployment's cached files (`invalidate`); files unused for a day
//! are swept as new ones are written.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::{Error, Gateway, Result};
use crate::store::DeploymentId;

/// Longest and shortest link lifetime, and the default.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
pub const MIN_TTL: Duration = Duration::from_secs(60);
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Cached exports not read for this long are removed.
const CACHE_IDLE: Duration = Duration::from_secs(24 * 3600);

/// The path of a deployment's link.
pub fn path(id: &DeploymentId) -> String {
    format!("/v1/shared/{}/{}/export", id.tenant, id.deployment)
}

/// What is signed: the path and the parameters in sorted order, URL-encoded.
fn canonical(path: &str, params: &[(String, String)]) -> Vec<u8> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let query = serde_urlencoded::to_string(sorted).unwrap_or_default();
    format!("v1\n{path}\n{query}").into_bytes()
}

/// `params` (without `sig`) plus their signature, as a query string.
pub fn sign(state: &Gateway, path: &str, mut params: Vec<(String, String)>) -> String {
    let mac = state.auth.link_mac(&canonical(path, &params));
    params.push(("sig".into(), hex(&mac)));
    serde_urlencoded::to_string(params).unwrap_or_default()
}

/// Checks a link's signature and expiry; returns its parameters without `sig`.
pub fn verify(
    state: &Gateway,
    path: &str,
    query: &str,
    now_secs: u64,
) -> Result<Vec<(String, String)>> {
    let bad = || {
        Error::forbidden(
            "invalid_signature",
            "this export link is not valid (altered or incomplete); ask its creator for a new one",
        )
    };
    let mut params: Vec<(String, String)> = serde_urlencoded::from_str(query).map_err(|_| bad())?;
    let at = params
        .iter()
        .position(|(k, _)| k == "sig")
        .ok_or_else(bad)?;
    let (_, sig) = params.remove(at);
    if params.iter().any(|(k, _)| k == "sig") {
        return Err(bad());
    }
    let given = blake3::Hash::from_hex(sig.as_bytes()).map_err(|_| bad())?;
    // blake3::Hash compares in constant time.
    if given != blake3::Hash::from(state.auth.link_mac(&canonical(path, &params))) {
        return Err(bad());
    }
    let exp: u64 = params
        .iter()
        .find(|(k, _)| k == "exp")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(bad)?;
    if exp <= now_secs {
        return Err(Error::forbidden(
            "link_expired",
            format!(
                "this export link expired at {}; ask for a new one (POST /v1/deployments/{{id}}/export-links)",
                logstream_model::time::format_rfc3339(exp as i64 * 1_000_000_000)
            ),
        ));
    }
    Ok(params)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// === The cache of sealed exports ===

/// Bumped by every invalidation: a render that saw another generation at its start is
/// not kept (it may hold lines redacted since).
static GENERATION: AtomicU64 = AtomicU64::new(0);

fn dir(state: &Gateway, id: &DeploymentId) -> PathBuf {
    state
        .config
        .data_dir
        .join("export-cache")
        .join(&id.tenant)
        .join(&id.deployment)
}

/// Removes `id`'s cached exports (after a redaction or deletion).
pub fn invalidate(state: &Gateway, id: &DeploymentId) {
    GENERATION.fetch_add(1, Ordering::SeqCst);
    let d = dir(state, id);
    if let Err(e) = std::fs::remove_dir_all(&d)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %d.display(), error = %e, "removing cached exports failed");
    }
}

/// A cached export: its file, length and strong ETag (quoted).
pub struct Cached {
    pub file: PathBuf,
    pub len: u64,
    pub etag: String,
    /// Not kept in the cache (remove it once opened).
    pub temporary: bool,
}

/// The cached export of `key` (format and filter) for `id`, rendered by `render` into a
/// writer when missing. Blocking.
pub fn cached(
    state: &Gateway,
    id: &DeploymentId,
    key: &str,
    render: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> std::io::Result<Cached> {
    let d = dir(state, id);
    let name = hex(&blake3::hash(key.as_bytes()).as_bytes()[..12]);
    let (file, tag) = (d.join(&name), d.join(format!("{name}.etag")));
    if let Ok(etag) = std::fs::read_to_string(&tag)
        && let Ok(m) = std::fs::metadata(&file)
    {
        touch(&tag);
        return Ok(Cached {
            file,
            len: m.len(),
            etag,
            temporary: false,
        });
    }
    let generation = GENERATION.load(Ordering::SeqCst);
    std::fs::create_dir_all(&d)?;
    sweep(&state.config.data_dir.join("export-cache"));
    let tmp = d.join(format!(".{name}.{}.tmp", rand::random::<u64>()));
    let mut out = HashingWriter {
        inner: std::io::BufWriter::new(std::fs::File::create(&tmp)?),
        hasher: blake3::Hasher::new(),
        len: 0,
    };
    let rendered = render(&mut out).and_then(|()| {
        use std::io::Write;
        out.inner.flush()
    });
    if let Err(e) = rendered {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let etag = format!("\"{}\"", out.hasher.finalize().to_hex());
    let len = out.len;
    drop(out);
    if GENERATION.load(Ordering::SeqCst) != generation {
        // Redacted or deleted meanwhile: serve this once, keep nothing.
        return Ok(Cached {
            file: tmp,
            len,
            etag,
            temporary: true,
        });
    }
    std::fs::rename(&tmp, &file)?;
    let tag_tmp = d.join(format!(".{name}.etag.{}.tmp", rand::random::<u64>()));
    std::fs::write(&tag_tmp, &etag)?;
    std::fs::rename(&tag_tmp, &tag)?;
    Ok(Cached {
        file,
        len,
        etag,
        temporary: false,
    })
}

struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    len: u64,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Marks an entry used (its `.etag` file's mtime).
fn touch(tag: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(tag) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Removes cached exports unused for `CACHE_IDLE` (and stray temporary files).
fn sweep(root: &Path) {
    let Some(cutoff) = SystemTime::now().checked_sub(CACHE_IDLE) else {
        return;
    };
    let Ok(tenants) = std::fs::read_dir(root) else {
        return;
    };
    for deployments in tenants
        .flatten()
        .filter_map(|t| std::fs::read_dir(t.path()).ok())
    {
        for dep in deployments.flatten() {
            let Ok(files) = std::fs::read_dir(dep.path()) else {
                continue;
            };
            for f in files.flatten() {
                let p = f.path();
                let old = f
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t < cutoff);
                let is_tag = p.extension().is_some_and(|e| e == "etag");
                if old
                    && (is_tag
                        || p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.')))
                {
                    let _ = std::fs::remove_file(&p);
                    if is_tag {
                        let _ = std::fs::remove_file(p.with_extension(""));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_form_ignores_parameter_order_and_covers_every_value() {
        let a = vec![("format".into(), "csv".into()), ("exp".into(), "9".into())];
        let b = vec![("exp".into(), "9".into()), ("format".into(), "csv".into())];
        assert_eq!(canonical("/p", &a), canonical("/p", &b));
        let c = vec![("exp".into(), "9".into()), ("format".into(), "text".into())];
        assert_ne!(canonical("/p", &a), canonical("/p", &c));
        assert_ne!(canonical("/p", &a), canonical("/q", &a));
        // A value cannot move into another parameter.
        let d = vec![("exp".into(), "9&format=csv".into())];
        assert_ne!(canonical("/p", &a), canonical("/p", &d));
    }
}
