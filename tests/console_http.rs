//! The console over plain HTTP: sign-in, sessions and their cookie, CSRF,
//! expiry, revocation, the security headers, escaping, the sign-in rate
//! limit, and TLS.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;
mod console_support;

use std::time::{Duration, SystemTime};

use common::{ManualClock, Options, TestApp};
use console_support::{Http, Page, World};
use entitled::proto::v1 as pb;

/// The name of the session cookie over plain HTTP.
const SESSION: &str = "entitled_session";

async fn signed_in(w: &World, secret: &str) -> Http {
    let mut http = Http::new(&w.base);
    let answer = http.sign_in(secret).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    http
}

#[tokio::test]
async fn the_session_cookie_is_http_only_same_site_strict_and_random() {
    let w = World::new().await;
    let mut http = Http::new(&w.base);
    let answer = http.sign_in(&w.admin).await;
    assert_eq!((answer.status, answer.location()), (303, "/"));
    let cookie = answer
        .cookies()
        .into_iter()
        .find(|c| c.starts_with(&format!("{SESSION}=")))
        .unwrap()
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    // 256 random bits, base64url: 43 characters, and not the token.
    let value = &http.cookies[SESSION];
    assert_eq!(value.len(), 43, "{value}");
    assert!(!w.admin.contains(value.as_str()) && !value.contains(&w.admin));
    // A second sign-in gets another session.
    let mut again = Http::new(&w.base);
    again.sign_in(&w.admin).await;
    assert_ne!(again.cookies[SESSION], http.cookies[SESSION]);
}

#[tokio::test]
async fn the_token_appears_in_no_page_url_or_cookie() {
    let w = World::new().await;
    let mut http = Http::new(&w.base);
    let secret_part = w.admin.split_once('.').unwrap().1.to_owned();
    let mut pages: Vec<Page> = vec![http.sign_in(&w.admin).await];
    for path in [
        "/",
        "/accounts/acme/users",
        "/accounts/acme/users/ada",
        "/accounts/acme/users/ada/services",
        "/accounts/acme/audit",
    ] {
        pages.push(http.get(path).await);
    }
    // A refused sign-in does not show the token typed either.
    let mut other = Http::new(&w.base);
    pages.push(other.sign_in(&format!("{}x", w.admin)).await);
    for page in &pages {
        assert!(!page.body.contains(&secret_part), "{}", page.body);
        for (_, value) in &page.headers {
            assert!(!value.to_str().unwrap_or("").contains(&secret_part));
        }
    }
}

#[tokio::test]
async fn every_form_needs_the_sessions_csrf_token() {
    let w = World::new().await;
    let mut http = signed_in(&w, &w.admin).await;
    let form = http.get("/accounts/acme/users/ada/services").await;
    let revision = form.input_value("revision");
    let save = |csrf: &'static str| {
        vec![
            ("csrf", csrf),
            ("edition", "X8"),
            ("tier", "essentials"),
            ("shown_tier", "none"),
        ]
    };
    for csrf in ["", "not-the-token"] {
        let mut fields = save(csrf);
        fields.push(("revision", &revision));
        let refused = http
            .post("/accounts/acme/users/ada/services", &fields)
            .await;
        assert_eq!(refused.status, 403, "{}", refused.body);
        assert!(refused.body.contains("This form has expired"));
    }
    assert_eq!(
        w.services("acme", "ada").await,
        (String::new(), common::T::None as i32)
    );
    // Another session's token is not this session's.
    let mut other = signed_in(&w, &w.admin).await;
    let other_csrf = other.get("/accounts/acme/users").await.csrf();
    let refused = http
        .post("/accounts/acme/users/ada/remove", &[("csrf", &other_csrf)])
        .await;
    assert_eq!(refused.status, 403);
    assert!(w.app.get_user("acme", "ada").await.is_ok());
    // Sign-out needs it too.
    let refused = http.post("/sign-out", &[("csrf", "nope")]).await;
    assert_eq!(refused.status, 403);
    assert_eq!(http.get("/accounts/acme/users").await.status, 200);
    // The sign-in form has one of its own, in a cookie and the form.
    let mut fresh = Http::new(&w.base);
    fresh.get("/sign-in").await;
    let refused = fresh
        .post("/sign-in", &[("token", &w.admin), ("csrf", "forged")])
        .await;
    assert_eq!(refused.status, 403);
    assert!(!fresh.cookies.contains_key(SESSION));
    // With the right one, the form works; sign-out ends the session.
    let csrf = http.get("/accounts/acme/users").await.csrf();
    let out = http.post("/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!(
        (out.status, out.location()),
        (303, "/sign-in?ended=signed-out")
    );
    assert!(!http.cookies.contains_key(SESSION));
}

#[tokio::test]
async fn sessions_end_after_30_idle_minutes_or_12_hours() {
    let clock = ManualClock::new(SystemTime::now());
    let app = TestApp::spawn_with(Options {
        clock: Some(clock.clock()),
        ..Options::default()
    })
    .await;
    let w = World::with(app).await;
    let mut idle = signed_in(&w, &w.admin).await;
    clock.advance(Duration::from_secs(29 * 60));
    assert_eq!(idle.get("/accounts/acme/users").await.status, 200);
    clock.advance(Duration::from_secs(30 * 60));
    let ended = idle.get("/accounts/acme/users").await;
    assert_eq!(
        (ended.status, ended.location()),
        (303, "/sign-in?ended=expired")
    );
    let page = idle.get("/sign-in?ended=expired").await;
    assert!(page.body.contains("Your session has expired"));

    // Busy, but 12 hours old: ended all the same.
    let mut busy = signed_in(&w, &w.admin).await;
    for _ in 0..((12 * 60) / 25) {
        clock.advance(Duration::from_secs(25 * 60));
        assert_eq!(busy.get("/accounts/acme/users").await.status, 200);
    }
    clock.advance(Duration::from_secs(25 * 60));
    assert_eq!(
        busy.get("/accounts/acme/users").await.location(),
        "/sign-in?ended=expired"
    );
}

#[tokio::test]
async fn a_revoked_token_ends_its_sessions_at_the_next_request() {
    let w = World::new().await;
    let mut http = signed_in(&w, &w.admin).await;
    assert_eq!(http.get("/accounts/acme/users").await.status, 200);
    let token_id = w.admin.split_once('.').unwrap().0.to_owned();
    w.app
        .tokens
        .clone()
        .revoke_token(pb::RevokeTokenRequest {
            token_id,
            ..Default::default()
        })
        .await
        .unwrap();
    let ended = http.get("/accounts/acme/users").await;
    assert_eq!(ended.location(), "/sign-in?ended=revoked");
    // And for good: the session is gone.
    assert_eq!(
        http.get("/accounts/acme/users").await.location(),
        "/sign-in"
    );
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let w = World::new().await;
    let mut http = signed_in(&w, &w.admin).await;
    for path in [
        "/sign-in",
        "/no-such-page",
        "/static/console.css",
        "/static/console.js",
        "/accounts/acme/users",
        "/accounts/acme/users/ada/services",
        "/accounts/globex/users",
    ] {
        let page = http.get(path).await;
        let csp = page.header("content-security-policy");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(page.header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(page.header("referrer-policy"), "no-referrer", "{path}");
        if page.header("content-type").starts_with("text/html") {
            // Nothing inline for the policy to forbid: scripts and styles
            // are files.
            assert!(!page.body.contains("<script>"), "{path}");
            assert!(!page.body.contains(" style="), "{path}");
            assert!(!page.body.contains("<style"), "{path}");
            assert_eq!(page.header("cache-control"), "no-store", "{path}");
        }
    }
}

#[tokio::test]
async fn a_display_name_of_script_shows_as_text() {
    let w = World::new().await;
    w.app
        .provisioning
        .clone()
        .put_user(pb::PutUserRequest {
            account_id: "acme".into(),
            user_id: "mallory".into(),
            display_name: "<script>alert(1)</script>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut http = signed_in(&w, &w.admin).await;
    for path in [
        "/accounts/acme/users",
        "/accounts/acme/users/mallory",
        "/accounts/acme/users/mallory/services",
        "/accounts/acme/audit",
    ] {
        let page = http.get(path).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(
            page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{path}"
        );
        assert!(!page.body.contains("<script>alert(1)"), "{path}");
    }
    // Typed into a form, it is escaped there too.
    let csrf = http.get("/accounts/acme/users/new").await.csrf();
    let refused = http
        .post(
            "/accounts/acme/users",
            &[
                ("csrf", &csrf),
                ("user_id", "bad id\"><script>"),
                ("display_name", "<b>x</b>"),
            ],
        )
        .await;
    assert_eq!(refused.status, 422);
    assert!(!refused.body.contains("\"><script>"));
    assert!(refused.body.contains("&lt;b&gt;x&lt;/b&gt;"));
}

#[tokio::test]
async fn gateway_and_provisioner_tokens_are_refused_naming_who_may() {
    let w = World::new().await;
    for (secret, role) in [(&w.gateway, "gateway"), (&w.provisioner, "provisioner")] {
        let mut http = Http::new(&w.base);
        let refused = http.sign_in(secret).await;
        assert_eq!(refused.status, 403, "{}", refused.body);
        assert!(
            refused.body.contains(&format!(
                "A {role} token cannot sign in to the console. Only operator and account-admin tokens may sign in."
            )),
            "{}",
            refused.body
        );
        assert!(!http.cookies.contains_key(SESSION));
    }
    let mut http = Http::new(&w.base);
    let refused = http.sign_in("tok_0000000000000000.nope").await;
    assert_eq!(refused.status, 401);
    assert!(refused.body.contains("The token was not accepted"));
    // The operator may.
    let mut operator = Http::new(&w.base);
    let ok = operator.sign_in(&w.app.operator_secret).await;
    assert_eq!(ok.status, 303);
    assert_eq!(operator.get("/").await.location(), "/accounts");
}

#[tokio::test]
async fn failed_sign_ins_are_rate_limited_and_counted() {
    let w = World::new().await;
    let mut http = Http::new(&w.base);
    for _ in 0..5 {
        assert_eq!(http.sign_in("tok_0000000000000000.guess").await.status, 401);
    }
    // Now even the right token is refused untried.
    let limited = http.sign_in(&w.admin).await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert!(limited.body.contains("Too many failed sign-ins"));
    assert!(!http.cookies.contains_key(SESSION));
    let metrics = reqwest::get(format!("http://{}/metrics", w.app.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "entitled_console_sign_ins_total{outcome=\"bad_token\"} 5",
        "entitled_console_sign_ins_total{outcome=\"rate_limited\"} 1",
        "entitled_console_sign_ins_total{outcome=\"signed_in\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn over_tls_the_console_uses_the_servers_certificate_and_secure_cookies() {
    use entitled::{
        catalogue::Catalogue,
        server::{Application, Config, TlsFiles},
    };
    use rcgen::{CertificateParams, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{
        TlsConnector,
        rustls::{ClientConfig, RootCertStore, pki_types::ServerName},
    };

    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
    let mut config = Config::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("data"),
        Catalogue::builtin().unwrap(),
    );
    config.console_listen = Some("127.0.0.1:0".parse().unwrap());
    config.operator_token_file = Some(dir.path().join("operator.token"));
    config.tls = Some(TlsFiles {
        cert: dir.path().join("server.pem"),
        key: dir.path().join("server.key"),
        client_ca: None,
    });
    let app = Application::build(config).await.unwrap();
    let addr = app.console_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));

    let mut roots = RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(std::sync::Arc::new(client));
    // One request on its own TLS connection; the whole response.
    let send = |request: String| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut tls = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            tls.write_all(request.as_bytes()).await.unwrap();
            let mut response = String::new();
            tls.read_to_string(&mut response).await.unwrap();
            response
        }
    };
    let set_cookie = |response: &str, name: &str| -> String {
        response
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:") && l.contains(name))
            .unwrap_or_else(|| panic!("no {name} cookie in {response}"))
            .to_owned()
    };
    let response =
        send("GET /sign-in HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let cookie = set_cookie(&response, "__Host-entitled_sign_in=");
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }

    // Signed in, the session's cookie is Secure too.
    let pair = cookie
        .split_once(':')
        .unwrap()
        .1
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let marker = "name=\"csrf\" value=\"";
    let csrf = response[response.find(marker).unwrap() + marker.len()..]
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let secret = std::fs::read_to_string(dir.path().join("operator.token")).unwrap();
    let body = format!(
        "token={}&csrf={}",
        console_support::enc(secret.trim()),
        console_support::enc(&csrf)
    );
    let response = send(format!(
        "POST /sign-in HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Cookie: {pair}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    ))
    .await;
    assert!(response.starts_with("HTTP/1.1 303"), "{response}");
    let session = set_cookie(&response, "__Host-entitled_session=");
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(session.contains(attribute), "{session}");
    }
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
