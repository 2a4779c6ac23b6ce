//! What the console's tests share: a server with two accounts and an
//! account admin, a small HTTP client that keeps the session cookie, and
//! the browser (Chromium over WebDriver), skipped in one printed line when
//! it is not installed.

#![allow(dead_code, reason = "each console test binary uses a different part")]

pub mod browser;

use std::collections::HashMap;

use crate::common::{T, TestApp};
use entitled::proto::v1 as pb;

/// acme (X Series) with ada, bob and the admin's own user ann; globex with
/// gus, which acme's admin must never reach.
pub struct World {
    pub app: TestApp,
    /// An account admin of acme whose own user is ann.
    pub admin: String,
    pub gateway: String,
    pub provisioner: String,
    pub base: String,
}

impl World {
    pub async fn new() -> Self {
        Self::with(TestApp::spawn().await).await
    }

    pub async fn with(app: TestApp) -> Self {
        app.create_account("acme", "work").await;
        app.create_account("globex", "work").await;
        for (account, user, name) in [
            ("acme", "ada", "Ada Lovelace"),
            ("acme", "bob", "Bob Babbage"),
            ("acme", "ann", "Ann Admin"),
            ("globex", "gus", "Gus Globex"),
        ] {
            app.provisioning
                .clone()
                .put_user(pb::PutUserRequest {
                    account_id: account.into(),
                    user_id: user.into(),
                    display_name: name.into(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        let admin = app
            .token("acme console admin", pb::Role::AccountAdmin, "acme", "ann")
            .await;
        let gateway = app.token("gateway", pb::Role::Gateway, "", "").await;
        let provisioner = app.token("billing", pb::Role::Provisioner, "", "").await;
        let base = format!("http://{}", app.console_addr);
        World {
            app,
            admin,
            gateway,
            provisioner,
            base,
        }
    }

    /// The user's edition ("" for none) and tier, over gRPC.
    pub async fn services(&self, account: &str, user: &str) -> (String, i32) {
        let u = self.app.get_user(account, user).await.unwrap();
        (u.edition, u.analytics_tier)
    }

    /// What CheckAnalyticsAccess answers a gateway for the user.
    pub async fn gateway_tier(&self, account: &str, user: &str) -> i32 {
        let mut access = self.app.clients(Some(&self.gateway)).access;
        access
            .check_analytics_access(pb::CheckAnalyticsAccessRequest {
                account_id: account.into(),
                user_id: user.into(),
                min_revision: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .tier
    }

    pub fn tier(t: T) -> i32 {
        t as i32
    }
}

/// One HTTP response, read whole.
pub struct Page {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn cookies(&self) -> Vec<&str> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    pub fn location(&self) -> &str {
        self.header("location")
    }

    /// The first hidden `csrf` value on the page.
    pub fn csrf(&self) -> String {
        self.input_value("csrf")
    }

    /// The value of the first input named `name`.
    pub fn input_value(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no input {name} in {}", self.body))
            + marker.len();
        let end = start + self.body[start..].find('"').unwrap();
        self.body[start..end].to_owned()
    }
}

/// A client that keeps cookies by name (as a browser would) and does not
/// follow redirects, so tests see them.
pub struct Http {
    base: String,
    client: reqwest::Client,
    pub cookies: HashMap<String, String>,
}

impl Http {
    pub fn new(base: &str) -> Self {
        Http {
            base: base.to_owned(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: HashMap::new(),
        }
    }

    fn keep(&mut self, page: &Page) {
        for cookie in page.cookies() {
            let pair = cookie.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || cookie.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn read(&mut self, response: reqwest::Response) -> Page {
        let page = Page {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        };
        self.keep(&page);
        page
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.read(response).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        self.read(response).await
    }

    /// Signs in with `secret`; returns the answer to the sign-in POST.
    pub async fn sign_in(&mut self, secret: &str) -> Page {
        let form = self.get("/sign-in").await;
        let csrf = form.csrf();
        self.post("/sign-in", &[("token", secret), ("csrf", &csrf)])
            .await
    }
}

/// Percent-encoding for a form body.
pub fn enc(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
