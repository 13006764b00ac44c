//! Interactive API docs at `/docs`: Swagger UI over `/api/v1/openapi.json`, from the npm
//! registry's `swagger-ui-dist` (vendored under `assets/swagger-ui` by
//! `scripts/update-swagger-ui.sh`) and embedded in the binary: nothing is fetched from a
//! CDN, so the page works on an isolated network and under a strict CSP.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::AppState;

const BUNDLE: &str = include_str!("../assets/swagger-ui/swagger-ui-bundle.js");
const CSS: &str = include_str!("../assets/swagger-ui/swagger-ui.css");
/// The vendored version and the SHA-256 of each asset.
pub const VERSION: &str = include_str!("../assets/swagger-ui/VERSION");

const INDEX: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Tern admin API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"#;

/// Separate from the page so that the CSP needs no inline script.
const INIT: &str = r##"window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/api/v1/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: false,
    validatorUrl: null
  });
};
"##;

/// The page's policy: everything from this origin; Swagger UI sets inline styles and shows
/// data: images.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
     script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    res
}

/// The `/docs` routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/docs", get(|| async { Redirect::permanent("/docs/") }))
        .route("/docs/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/docs/init.js", get(|| async { asset("text/javascript; charset=utf-8", INIT) }))
        .route(
            "/docs/swagger-ui-bundle.js",
            get(|| async { asset("text/javascript; charset=utf-8", BUNDLE) }),
        )
        .route("/docs/swagger-ui.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(s: &str) -> String {
        crate::auth::sha256_hex(s)
    }

    /// The embedded assets are exactly what `scripts/update-swagger-ui.sh` recorded: a hand
    /// edit (or a truncated copy) fails here.
    #[test]
    fn assets_match_the_recorded_digests() {
        for (name, body) in [("swagger-ui-bundle.js", BUNDLE), ("swagger-ui.css", CSS)] {
            let line = VERSION.lines().find(|l| l.ends_with(name)).expect("digest recorded");
            assert_eq!(line.split_whitespace().next(), Some(sha256_hex(body).as_str()), "{name}");
        }
        assert!(VERSION.starts_with("swagger-ui-dist "));
    }
}
