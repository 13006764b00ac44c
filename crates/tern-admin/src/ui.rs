//! The admin web UI (`web-admin/`), embedded at build time and served at `/` on the admin
//! listener: `index.html` at `/`, hashed assets under `/assets/` (cached for a year: their
//! names change with their contents). A binary built before the UI serves a page that says
//! how to build it.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

mod assets {
    include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));
}

/// What the browser may load: only this origin (the UI makes no external request).
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
    connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// Served at `/` when the binary was built without the UI.
const NOT_BUILT: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Tern admin UI not built</title></head><body style=\"font-family:system-ui;max-width:40rem;margin:3rem auto\">\
<h1>The admin web UI is not in this binary</h1>\
<p>This <code>tern</code> was compiled before the UI was built. Build the UI, then the binary:</p>\
<pre>cd web-admin &amp;&amp; npm ci &amp;&amp; npm run build\ncargo build --release -p tern-server</pre>\
<p><code>scripts/run.sh</code> does both. The admin API itself works: see <a href=\"/docs\">/docs</a>.</p>\
</body></html>";

/// Whether the UI was built into this binary.
pub fn is_embedded() -> bool {
    find("/index.html").is_some()
}

fn find(path: &str) -> Option<&'static [u8]> {
    assets::FILES.iter().find(|(p, _)| *p == path).map(|(_, b)| *b)
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("woff2") => "font/woff2",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// `GET /`: the single-page app (or how to build it).
pub async fn index() -> Response {
    let (status, body) = match find("/index.html") {
        Some(b) => (StatusCode::OK, b),
        None => (StatusCode::OK, NOT_BUILT.as_bytes()),
    };
    let mut res = (status, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    // The page names the current assets: always revalidate it.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// `GET /assets/{*path}`: a bundled file.
pub async fn asset(Path(path): Path<String>) -> Response {
    let full = format!("/assets/{path}");
    let Some(body) = find(&full) else {
        return crate::ApiError::NotFound("no such asset".into()).into_response();
    };
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(&full)));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    res
}
