//! The dashboard's static files, embedded in the binary (no Node.js, no CDN at run time):
//! our page, script and style from `assets/`, and uPlot (MIT, `assets/vendor/uplot/`).
//! They hold no data, so they are served without a token; the page asks the API for data
//! with the token it was given (`#token=` in the address, kept in the tab's session
//! storage, or typed in).

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// (path under `/assets/`, content type, bytes).
const FILES: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/app.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/vendor/uplot/uPlot.min.css"),
    ),
    (
        "uPlot.LICENSE.txt",
        "text/plain; charset=utf-8",
        include_str!("../../assets/vendor/uplot/LICENSE"),
    ),
];

const INDEX: &str = include_str!("../../assets/index.html");

/// Headers every dashboard file carries: no framing by other sites, no sniffing, and a
/// policy that allows only our own scripts and API.
fn guarded(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
            ),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

pub(crate) async fn index() -> Response {
    guarded("text/html; charset=utf-8", INDEX)
}

pub(crate) async fn file(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, ct, body)) => guarded(ct, body),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}
