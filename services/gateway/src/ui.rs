//! The web UI (`ui/`): native ES modules, a style sheet and the vendored
//! chart library, compiled into the binary and served as they are. The
//! browser loads `index.html`, which imports `app.js`; every module imports
//! the others by relative path, so each file needs its own route here.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use cbir_common::metrics::LabelledRoutes;

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// One file of `ui/`, at its URL.
pub struct Asset {
    pub url: &'static str,
    /// The path under `ui/`.
    pub file: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

macro_rules! assets {
    ($($file:literal => $content_type:expr),* $(,)?) => {
        &[$(Asset {
            url: concat!("/assets/", $file),
            file: $file,
            content_type: $content_type,
            body: include_str!(concat!("../ui/", $file)),
        }),*]
    };
}

/// The page itself, at `/`.
pub const INDEX: Asset = Asset {
    url: "/",
    file: "index.html",
    content_type: HTML,
    body: include_str!("../ui/index.html"),
};

/// Everything the page loads, under `/assets/`.
pub const ASSETS: &[Asset] = assets![
    "app.js" => JS,
    "api.js" => JS,
    "browse.js" => JS,
    "charts.js" => JS,
    "collections-admin.js" => JS,
    "collections.js" => JS,
    "config.js" => JS,
    "dataset-check.js" => JS,
    "dom.js" => JS,
    "dupes.js" => JS,
    "format.js" => JS,
    "indexing.js" => JS,
    "job-view.js" => JS,
    "jobs.js" => JS,
    "maintenance.js" => JS,
    "models.js" => JS,
    "operations.js" => JS,
    "query-file.js" => JS,
    "search.js" => JS,
    "similarity.js" => JS,
    "state.js" => JS,
    "status.js" => JS,
    "tar.js" => JS,
    "training.js" => JS,
    "url-state.js" => JS,
    "viewer.js" => JS,
    "style.css" => CSS,
    "vendor/uPlot.esm.js" => JS,
    "vendor/uPlot.min.css" => CSS,
    "vendor/uPlot.LICENSE" => TEXT,
];

/// A route per file, each labelled with its URL in the metrics.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    std::iter::once(&INDEX)
        .chain(ASSETS)
        .fold(Router::new(), |router, asset: &'static Asset| {
            router.route_labelled(asset.url, get(move || async move { serve(asset) }))
        })
}

fn serve(asset: &Asset) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    /// Files under `dir`, as paths relative to `root` with `/` separators.
    fn files(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read ui/") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                files(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("under ui/");
                out.insert(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }

    /// A module added to `ui/` without a route would fail to load in the
    /// browser (a 404 on its import); the unit tests are not served.
    #[test]
    fn every_file_of_ui_is_served_once_with_its_type() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
        let mut on_disk = BTreeSet::new();
        files(&root, &root, &mut on_disk);
        on_disk.retain(|f| !f.starts_with("tests/"));
        let served: Vec<&str> = std::iter::once(&INDEX)
            .chain(ASSETS)
            .map(|a| a.file)
            .collect();
        let unique: BTreeSet<String> = served.iter().map(|f| f.to_string()).collect();
        assert_eq!(unique.len(), served.len(), "a file is listed twice");
        assert_eq!(unique, on_disk, "ui/ and the asset table differ");
        for a in std::iter::once(&INDEX).chain(ASSETS) {
            let want = match a.file.rsplit('.').next() {
                Some("html") => HTML,
                Some("js") => JS,
                Some("css") => CSS,
                _ => TEXT,
            };
            assert_eq!(a.content_type, want, "{}", a.file);
        }
    }
}
