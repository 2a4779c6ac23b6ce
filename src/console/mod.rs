//! The web console: the support articles' procedure (Users → Edit →
//! Services and permissions → Save) as server-rendered pages, served by the
//! same binary on a listener of its own (`--console-listen`).
//!
//! It sits beside `grpc/` on top of the same domain service: every page
//! reaches `service::Entitlements` through `console/service.rs` with a
//! `Caller` marked `Via::Console`, so the rules, the permission matrix and
//! the audit trail are the ones gRPC meets. Nothing here touches the store.
//!
//! - `session.rs`: the cookie, the server-side map (idle and absolute
//!   expiry, bounded), CSRF tokens;
//! - `limit.rs`: failed sign-ins, per address and overall;
//! - `listener.rs`: plain TCP or TLS with the server's certificate;
//! - `routes/`: the handlers, and the extractors that sign each request in
//!   (`Signed`) and check each form's CSRF token (`Posted`);
//! - `templates/`: the pages (maud: escaped by default, checked when
//!   compiled); `static/`: the one stylesheet and the one script, compiled
//!   into the binary. Every page works with JavaScript off.

mod limit;
mod listener;
mod routes;
pub mod service;
mod session;
mod templates;

use std::{future::Future, sync::Arc};

use axum::{
    Router,
    extract::Request,
    http::{HeaderValue, header},
    middleware::{self, Next},
    response::Response,
    routing::get,
};
use prometheus::{IntCounter, IntCounterVec, Opts};

pub use listener::{ConsoleListener, tls_config};
pub use session::{ABSOLUTE_EXPIRY, IDLE_EXPIRY, MAX_SESSIONS};

use crate::{
    metrics::Metrics,
    service::{Clock, Entitlements},
};

/// The console's state: cheap to clone.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    service: service::Service,
    sessions: session::Sessions,
    limiter: limit::SignInLimiter,
    /// Served over TLS: cookies are `Secure` and `__Host-` prefixed.
    secure: bool,
    sign_ins: SignIns,
}

/// `entitled_console_sign_ins_total{outcome}`, resolved once.
struct SignIns {
    signed_in: IntCounter,
    bad_token: IntCounter,
    role_refused: IntCounter,
    rate_limited: IntCounter,
}

impl Console {
    pub fn new(
        entitlements: Entitlements,
        metrics: &Metrics,
        clock: Clock,
        secure: bool,
    ) -> Result<Self, prometheus::Error> {
        let counter = IntCounterVec::new(
            Opts::new(
                "entitled_console_sign_ins_total",
                "Console sign-ins, by outcome: signed_in, bad_token (unknown, revoked or malformed), role_refused (a gateway or provisioner token), rate_limited (refused untried: too many failures)",
            ),
            &["outcome"],
        )?;
        metrics.registry().register(Box::new(counter.clone()))?;
        let sign_ins = SignIns {
            signed_in: counter.with_label_values(&["signed_in"]),
            bad_token: counter.with_label_values(&["bad_token"]),
            role_refused: counter.with_label_values(&["role_refused"]),
            rate_limited: counter.with_label_values(&["rate_limited"]),
        };
        Ok(Console {
            inner: Arc::new(Inner {
                service: service::Service::new(entitlements, metrics.clone()),
                sessions: session::Sessions::new(clock),
                limiter: limit::SignInLimiter::default(),
                secure,
                sign_ins,
            }),
        })
    }

    fn service(&self) -> &service::Service {
        &self.inner.service
    }

    /// The session cookie's name: `__Host-` under TLS, so no other site
    /// and no plain-HTTP page can set it.
    fn session_cookie(&self) -> &'static str {
        if self.inner.secure {
            "__Host-entitled_session"
        } else {
            "entitled_session"
        }
    }

    /// The sign-in form's CSRF cookie (there is no session yet).
    fn sign_in_cookie(&self) -> &'static str {
        if self.inner.secure {
            "__Host-entitled_sign_in"
        } else {
            "entitled_sign_in"
        }
    }

    /// A `Set-Cookie` value: HttpOnly, SameSite=Strict, the whole site, and
    /// Secure under TLS. An empty value with `clear` removes it.
    fn cookie(&self, name: &str, value: &str, clear: bool) -> String {
        let mut cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
        if self.inner.secure {
            cookie.push_str("; Secure");
        }
        if clear {
            cookie.push_str("; Max-Age=0");
        }
        cookie
    }

    /// The router, with the security headers on every response.
    pub fn router(self) -> Router {
        routes::router()
            .route("/static/console.css", get(stylesheet))
            .route("/static/console.js", get(script))
            .layer(middleware::from_fn(security_headers))
            .with_state(self)
    }
}

/// Serves the console on `listener` until `shutdown` completes.
pub async fn serve(
    listener: ConsoleListener,
    console: Console,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = console
        .router()
        .into_make_service_with_connect_info::<listener::Peer>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Scripts and styles come only from this origin's files, so an injected
/// `<script>` or `style=` would not run; no page may be framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn stylesheet() -> ([(header::HeaderName, &'static str); 2], &'static str) {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("static/console.css"),
    )
}

async fn script() -> ([(header::HeaderName, &'static str); 2], &'static str) {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("static/console.js"),
    )
}
