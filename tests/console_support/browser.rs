//! Headless Chromium driven over WebDriver (chromedriver), as a person
//! would drive it: fields by their labels, buttons and links by their
//! text. Without Chromium and chromedriver the tests say so in one line
//! and pass, unless `ENTITLED_REQUIRE_BROWSER=1` (as `.ci/run` sets).
//! `ENTITLED_CHROMIUM` and `ENTITLED_CHROMEDRIVER` name other binaries.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use serde_json::json;

const CHROMIUM: [&str; 2] = ["/usr/bin/chromium", "/usr/bin/chromium-browser"];
const CHROMEDRIVER: [&str; 2] = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"];

/// The first of `paths` that exists, or the one in `env` if it is set.
fn first_existing(env: &str, paths: &[&str]) -> Option<PathBuf> {
    match std::env::var_os(env) {
        Some(path) => Some(PathBuf::from(path)).filter(|p| p.exists()),
        None => paths.iter().map(PathBuf::from).find(|p| p.exists()),
    }
}

/// A running chromedriver.
pub struct Driver {
    child: Child,
    port: u16,
    chromium: PathBuf,
    profiles: tempfile::TempDir,
}

impl Driver {
    /// Starts chromedriver, or returns None (having said so) when the
    /// browser is not installed and not required.
    pub async fn start(test: &str) -> Option<Driver> {
        let (Some(chromium), Some(driver)) = (
            first_existing("ENTITLED_CHROMIUM", &CHROMIUM),
            first_existing("ENTITLED_CHROMEDRIVER", &CHROMEDRIVER),
        ) else {
            if std::env::var("ENTITLED_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
                panic!(
                    "ENTITLED_REQUIRE_BROWSER=1 but chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
                );
            }
            // Straight to stderr, past the test harness's capture, and once
            // for all the browser tests of this binary.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "console browser tests skipped ({test} and the rest): chromium and chromedriver are not installed (apt-get install chromium chromium-driver; ENTITLED_REQUIRE_BROWSER=1 makes this a failure)"
                );
            });
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(Driver {
            child,
            port,
            chromium,
            profiles: tempfile::tempdir().unwrap(),
        })
    }

    /// A new browser with a fresh profile; JavaScript on or off.
    pub async fn browser(&self, name: &str, javascript: bool) -> Browser {
        let profile = self.profiles.path().join(name);
        let mut options = json!({
            "binary": self.chromium,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-dev-shm-usage",
                "--window-size=1280,1600",
                format!("--user-data-dir={}", profile.display()),
            ],
        });
        if !javascript {
            options["prefs"] = json!({ "profile.managed_default_content_settings.javascript": 2 });
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".to_owned(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap();
        let shots = screenshots_dir().join(name);
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            client,
            shots,
            step: 0,
        }
    }
}

impl Drop for Driver {
    /// chromedriver's `/shutdown` quits the browsers it started, so none is
    /// left behind when a test fails half-way; killed if it does not exit.
    fn drop(&mut self) {
        use std::io::Write;
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = write!(
                stream,
                "GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `target/console-screenshots`: beside the test's own temporary folder.
pub fn screenshots_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("console-screenshots")
}

/// One browser window and its numbered screenshots.
pub struct Browser {
    pub client: Client,
    shots: PathBuf,
    step: u32,
}

fn quoted(text: &str) -> String {
    if text.contains('\'') {
        format!("\"{text}\"")
    } else {
        format!("'{text}'")
    }
}

impl Browser {
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// Saves a screenshot of this step as `NN-name.png`.
    pub async fn shot(&mut self, name: &str) -> PathBuf {
        self.step += 1;
        let path = self.shots.join(format!("{:02}-{name}.png", self.step));
        std::fs::write(&path, self.client.screenshot().await.unwrap()).unwrap();
        path
    }

    /// The control a `<label>` with this text is for.
    pub async fn field(&self, label: &str) -> Element {
        let xpath = format!("//*[@id=//label[normalize-space()={}]/@for]", quoted(label));
        self.client
            .find(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|e| panic!("no field labelled {label:?}: {e}"))
    }

    pub async fn fill(&self, label: &str, text: &str) {
        let field = self.field(label).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// Chooses an option of the select labelled `label` by its text.
    pub async fn choose(&self, label: &str, option: &str) {
        self.field(label)
            .await
            .select_by_label(option)
            .await
            .unwrap_or_else(|e| panic!("no option {option:?} in {label:?}: {e}"));
    }

    /// Clicks the label of a radio or checkbox, as a person does.
    pub async fn check(&self, label: &str) {
        let xpath = format!("//label[normalize-space()={}]", quoted(label));
        self.client
            .find(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|e| panic!("no label {label:?}: {e}"))
            .click()
            .await
            .unwrap();
    }

    pub async fn press(&self, button: &str) {
        let xpath = format!("//button[normalize-space()={}]", quoted(button));
        let element = self
            .client
            .find(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|e| panic!("no button {button:?}: {e}"));
        self.navigate_by(element).await;
    }

    /// Clicks `element` and waits for the page it leads to: the old page's
    /// root gone stale, the new one loaded.
    async fn navigate_by(&self, element: Element) {
        let old = self.client.find(Locator::Css("html")).await.unwrap();
        element.click().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while old.tag_name().await.is_ok() {
            assert!(Instant::now() < deadline, "the click led to no new page");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        loop {
            let state = self
                .client
                .execute("return document.readyState", vec![])
                .await;
            if matches!(state, Ok(serde_json::Value::String(s)) if s == "complete") {
                return;
            }
            assert!(Instant::now() < deadline, "the new page did not load");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn has_button(&self, button: &str) -> bool {
        let xpath = format!("//button[normalize-space()={}]", quoted(button));
        !self
            .client
            .find_all(Locator::XPath(&xpath))
            .await
            .unwrap()
            .is_empty()
    }

    pub async fn follow(&self, link: &str) {
        let element = self
            .client
            .find(Locator::LinkText(link))
            .await
            .unwrap_or_else(|e| panic!("no link {link:?}: {e}"));
        self.navigate_by(element).await;
    }

    /// Clicks Edit in the row of the table whose first cell starts with
    /// `user`.
    pub async fn edit_row(&self, user: &str) {
        let xpath = format!(
            "//tr[td[1][starts-with(normalize-space(), {})]]//a[starts-with(normalize-space(), 'Edit')]",
            quoted(user)
        );
        let element = self
            .client
            .find(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|e| panic!("no Edit beside {user:?}: {e}"));
        self.navigate_by(element).await;
    }

    /// The page's visible text.
    pub async fn text(&self) -> String {
        self.client
            .find(Locator::Css("body"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn heading(&self) -> String {
        self.client
            .find(Locator::Css("h1"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Whether the control labelled `label` can be used.
    pub async fn enabled(&self, label: &str) -> bool {
        self.field(label).await.is_enabled().await.unwrap()
    }

    pub async fn selected(&self, label: &str) -> bool {
        self.field(label).await.is_selected().await.unwrap()
    }

    /// The text an element's `aria-describedby` points to (its hint or
    /// reason).
    pub async fn description(&self, label: &str) -> String {
        let field = self.field(label).await;
        let ids = field
            .attr("aria-describedby")
            .await
            .unwrap()
            .unwrap_or_default();
        let mut text = String::new();
        for id in ids.split_whitespace() {
            if let Ok(e) = self.client.find(Locator::Id(id)).await {
                text.push_str(&e.text().await.unwrap());
                text.push(' ');
            }
        }
        text
    }

    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
