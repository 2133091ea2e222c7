//! The web page: jobs, runs and workers, live over the event feed. Plain HTML, CSS and
//! JavaScript embedded in the binary (`include_str!`), so the page works on an offline network
//! and needs no Node.js to run. The page is a client of the REST API and the event feed like any
//! other; the assets hold no data, so they are served without a token.
//!
//! Every asset is served with a strong ETag (its SHA-256) and `Cache-Control: no-cache`, so a
//! browser revalidates cheaply and never runs an old script against a new master, and with a
//! Content-Security-Policy that allows nothing but this origin.

use super::AppState;
use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use std::sync::{Arc, LazyLock};

/// One embedded file.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// Every file of the page, by the path it is served at.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("web/index.html"),
    },
    Asset {
        path: "/ui/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("web/app.js"),
    },
    Asset {
        path: "/ui/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("web/app.css"),
    },
    Asset {
        path: "/ui/favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("web/favicon.svg"),
    },
];

/// Only this origin: no CDN, no inline script, no framing. `connect-src 'self'` covers the
/// feed's `ws:`/`wss:` on the same host (CSP level 3).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let d = Sha256::digest(a.body.as_bytes());
            let hex: String = d.iter().take(12).map(|b| format!("{b:02x}")).collect();
            HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header value")
        })
        .collect()
});

pub fn router() -> Router<Arc<AppState>> {
    let mut r = Router::new();
    for (i, a) in ASSETS.iter().enumerate() {
        r = r.route(a.path, get(move |h: HeaderMap| async move { serve(i, &h) }));
    }
    r
}

fn serve(i: usize, req: &HeaderMap) -> Response {
    let a = &ASSETS[i];
    let etag = ETAGS[i].clone();
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag.to_str().unwrap_or_default()));
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(a.content_type)),
        (header::ETAG, etag),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ];
    if fresh {
        (StatusCode::NOT_MODIFIED, headers).into_response()
    } else {
        (headers, a.body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_outside_this_origin() {
        for a in ASSETS {
            for needle in ["http://", "https://", "//cdn", "@import", "fonts.googleapis"] {
                // the SVG namespace is an identifier, not a fetch
                let body = a.body.replace("http://www.w3.org/2000/svg", "");
                assert!(
                    !body.contains(needle),
                    "{} mentions {needle:?}: the page must work on an offline network",
                    a.path
                );
            }
        }
    }

    #[test]
    fn every_asset_the_page_references_is_served() {
        let index = ASSETS[0].body;
        for r in ["/ui/app.js", "/ui/app.css", "/ui/favicon.svg"] {
            assert!(index.contains(r), "index.html does not reference {r}");
            assert!(ASSETS.iter().any(|a| a.path == r), "{r} is referenced but not served");
        }
    }

    #[test]
    fn the_page_has_no_inline_script_the_policy_would_block() {
        let index = ASSETS[0].body;
        assert!(
            !index.contains("<script>"),
            "inline scripts are blocked by script-src 'self'"
        );
        assert!(
            !index.contains(" onclick="),
            "inline handlers are blocked by script-src 'self'"
        );
        assert!(
            !index.contains("style=\""),
            "inline styles are blocked by style-src 'self'"
        );
    }
}
