//! The status page at `/`: one HTML shell, one script and one stylesheet, embedded in the binary
//! (`include_str!`; no build step, no Node toolchain, nothing loaded from another origin). The
//! script is ours and small: it logs in (`POST /api/v1/login`), reads the JSON API, follows the
//! change feed (`GET /api/v1/events`) to stay live, and draws the timeline as SVG.
//!
//! Everything the page shows comes from clusters and is treated as hostile: the script builds
//! the DOM with `textContent` and attributes only, never HTML from data, and the Content
//! Security Policy ([`CONTENT_SECURITY_POLICY`], sent on every answer) allows no inline script,
//! so even markup that slipped in could not run.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The Content Security Policy of every answer: the hub's own script and styles only, no inline
/// script, no plugins, no framing, no form posts elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// An embedded file.
struct Asset {
    body: &'static str,
    content_type: &'static str,
}

const INDEX: Asset = Asset {
    body: include_str!("index.html"),
    content_type: "text/html; charset=utf-8",
};

const ASSETS: &[(&str, Asset)] = &[
    (
        "app.js",
        Asset {
            body: include_str!("app.js"),
            content_type: "text/javascript; charset=utf-8",
        },
    ),
    (
        "style.css",
        Asset {
            body: include_str!("style.css"),
            content_type: "text/css; charset=utf-8",
        },
    ),
    (
        "favicon.svg",
        Asset {
            body: include_str!("favicon.svg"),
            content_type: "image/svg+xml",
        },
    ),
];

/// A strong validator: the assets change only with the binary.
fn etag(body: &str) -> String {
    use sha2::Digest;
    format!("\"{}\"", &hex::encode(sha2::Sha256::digest(body.as_bytes()))[..20])
}

fn serve(asset: &Asset, headers: &HeaderMap) -> Response {
    let tag = etag(asset.body);
    let cache = HeaderValue::from_static("no-cache");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag))
    {
        return (StatusCode::NOT_MODIFIED, [(header::CACHE_CONTROL, cache)]).into_response();
    }
    let mut resp = (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
            (header::CACHE_CONTROL, cache),
        ],
        asset.body,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&tag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|(n, _)| *n == name) {
        Some((_, a)) => serve(a, &headers),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

/// The page's routes: `/` and `/assets/{file}`. They hold no data; the script reads it from the
/// API with the session's credentials.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(index)).route("/assets/{name}", get(asset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_embedded_and_validated() {
        assert!(INDEX.body.contains("/assets/app.js"));
        for (name, a) in ASSETS {
            assert!(!a.body.is_empty(), "{name}");
        }
        let mut h = HeaderMap::new();
        let first = serve(&INDEX, &h);
        assert_eq!(first.status(), StatusCode::OK);
        let tag = first.headers()[header::ETAG].clone();
        h.insert(header::IF_NONE_MATCH, tag);
        assert_eq!(serve(&INDEX, &h).status(), StatusCode::NOT_MODIFIED);
    }

    #[test]
    fn the_script_never_writes_html() {
        // Data from clusters is rendered as text only: the script has no HTML sinks at all.
        let js = ASSETS
            .iter()
            .find(|(n, _)| *n == "app.js")
            .map(|(_, a)| a.body)
            .unwrap_or("");
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ] {
            assert!(!js.contains(sink), "app.js uses {sink}");
        }
    }
}
