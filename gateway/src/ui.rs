//! The web UI: a deployments list and a log view, plain HTML, CSS and JavaScript modules
//! compiled into the binary (no Node toolchain to build or run), served by every role
//! that answers viewers (`all` and `edge`) at `/` and `/deployments/{id}`, assets under
//! `/ui/`.
//!
//! The page is static: it holds no token and no data. It asks for a token (or takes it
//! once from the URL fragment `#token=`), keeps it in `sessionStorage` and calls the same
//! HTTP API as every other client, with the token in a header. Every answer carries a
//! strict Content-Security-Policy: scripts and styles only from this origin, no inline
//! script, no request to any other origin, no framing.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The policy every UI answer carries. `style-src 'self'` still lets the scripts set
/// colours through the CSSOM (truecolor ANSI), which CSP does not govern; no inline
/// `style` attribute or element is used.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One file of the UI.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// One file of `gateway/ui/`, compiled in, with its content type.
macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_str!(concat!("../ui/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");

/// The files under `/ui/`.
const ASSETS: &[Asset] = &[
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("list.js", JS),
    asset!("log.js", JS),
    asset!("lines.js", JS),
    asset!("ansi.js", JS),
    asset!("style.css", CSS),
    asset!("ansi.css", CSS),
    asset!("favicon.svg", "image/svg+xml"),
];

/// The UI's routes, for any router state (the gateway's and the edge's).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/deployments/{id}", get(index))
        .route("/ui/{file}", get(asset))
        .route("/favicon.ico", get(favicon))
}

async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

async fn favicon(headers: HeaderMap) -> Response {
    serve(&ASSETS[ASSETS.len() - 1], &headers)
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => serve(a, &headers),
        None => (
            StatusCode::NOT_FOUND,
            secure_headers(),
            axum::Json(logstream_model::wire::ErrorBody::new(
                "no_such_asset",
                &format!("the UI has no file {file:?}; open / to start"),
            )),
        )
            .into_response(),
    }
}

/// The strong ETag of every file, computed once (the content is fixed at build time).
fn etag(a: &Asset) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        std::iter::once(&INDEX)
            .chain(ASSETS)
            .map(|a| format!("\"{}\"", &blake3::hash(a.body.as_bytes()).to_hex()[..20]))
            .collect()
    });
    let i = if a.name == INDEX.name {
        0
    } else {
        1 + ASSETS
            .iter()
            .position(|x| x.name == a.name)
            .expect("listed")
    };
    &tags[i]
}

/// Answers one file, or 304 when the browser's copy is current. Browsers revalidate
/// every time (`no-cache`), so an upgraded gateway is never mixed with old scripts.
///
/// For people working on the UI: with `LOGSTREAM_UI_DIR` set (to `gateway/ui`), files
/// are read from that directory at each request, so an edit needs a reload, not a build.
fn serve(a: &Asset, headers: &HeaderMap) -> Response {
    if let Some(dir) = std::env::var_os("LOGSTREAM_UI_DIR") {
        let mut h = secure_headers();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(a.content_type),
        );
        return match std::fs::read(std::path::Path::new(&dir).join(a.name)) {
            Ok(body) => (h, body).into_response(),
            Err(e) => (StatusCode::NOT_FOUND, h, format!("LOGSTREAM_UI_DIR: {e}")).into_response(),
        };
    }
    let tag = etag(a);
    let mut h = secure_headers();
    h.insert(header::ETAG, HeaderValue::from_static(tag));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    if fresh {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    (h, a.body).into_response()
}

fn secure_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_loads_is_served() {
        // index.html names its script and styles; app.js imports the other modules.
        let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        for a in std::iter::once(&INDEX).chain(ASSETS) {
            for part in a.body.split("/ui/").skip(1) {
                let file: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
                    .collect();
                if !file.is_empty() {
                    assert!(names.contains(&file.as_str()), "{} loads {file}", a.name);
                }
            }
            for part in a.body.split("from './").skip(1) {
                let file: String = part.chars().take_while(|c| *c != '\'').collect();
                assert!(names.contains(&file.as_str()), "{} imports {file}", a.name);
            }
        }
    }

    #[test]
    fn no_inline_script_or_style_in_the_page() {
        let html = INDEX.body;
        for (i, _) in html.match_indices("<script") {
            let tag = &html[i..i + html[i..].find('>').expect("closed tag")];
            assert!(tag.contains("src=\"/ui/"), "inline script: {tag}");
        }
        assert!(!html.contains("<style"), "inline style element");
        assert!(!html.contains(" style=\""), "inline style attribute");
        let handler = html.split_whitespace().find(|w| {
            w.strip_prefix("on")
                .and_then(|r| r.split_once('='))
                .is_some_and(|(name, _)| name.chars().all(|c| c.is_ascii_lowercase()))
        });
        assert!(handler.is_none(), "inline event handler: {handler:?}");
    }
}
