//! The HTTP server: `/metrics` for Prometheus, the landing page and the status API
//! (`/api/units`), over plain HTTP or TLS, with basic authentication, as the Prometheus
//! exporter-toolkit's web configuration file asks.
//!
//! hyper serves HTTP/1.1 and rustls (ring) TLS; what is ours is around them. `server.rs` admits
//! connections so that idle or slow clients cannot starve a scraper, bounds every wait, answers
//! GET and HEAD only and counts every failure. `web_config.rs` reads the exporter-toolkit file,
//! `tls.rs` turns it into a rustls configuration, `auth.rs` checks basic authentication, and
//! `live.rs` reads the file and its certificates again when they change. `routes.rs` maps paths
//! to answers (gzip when asked), built from the exposition and the unit table at request time;
//! `api.rs` and `landing.rs` are the documents. `listen.rs` binds the addresses or takes
//! systemd's sockets.

pub mod api;
mod auth;
pub mod landing;
mod listen;
mod live;
mod routes;
mod server;
mod tls;
pub mod web_config;

use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::engine::units::SharedUnits;
use crate::sink::prometheus::Exposition;

pub use auth::basic_credentials;
pub use listen::{bind, systemd_sockets};
pub use live::LiveConfig;
pub use routes::percent_encode;
pub use tls::subject_alt_names;
pub use web_config::{WebConfig, WebConfigError};

/// What the server answers from.
#[derive(Clone)]
pub struct Routes {
    /// `/metrics`.
    pub exposition: Exposition,
    /// `/api/units` and the landing page.
    pub units: SharedUnits,
    /// Whether `/api/*` is served (`--web.disable-api` turns it off).
    pub api: bool,
}

/// Checks a web configuration file as the server would read it at start-up: the file, and the
/// certificate, key and client CA it names. The error names the file and key, never a secret.
pub fn check_web_config(path: &Path) -> Result<WebConfig, WebConfigError> {
    LiveConfig::open(path).map(|live| live.current().config.clone())
}

/// Serves on every listener until `shutdown` is cancelled.
pub async fn serve(
    listeners: Vec<TcpListener>,
    routes: Routes,
    web: Option<LiveConfig>,
    shutdown: CancellationToken,
) {
    let server = Arc::new(server::Server::new(routes, web));
    let mut accepting = tokio::task::JoinSet::new();
    for listener in listeners {
        accepting.spawn(server::accept(listener, server.clone(), shutdown.clone()));
    }
    while accepting.join_next().await.is_some() {}
}
