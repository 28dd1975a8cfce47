//! A real browser for the web console's tests: Debian's `chromium`,
//! headless, driven through `chromedriver` (WebDriver) with fantoccini.
//!
//! A test that cannot start either fails with their output: installing
//! them is scripts/test.sh's job, and a console test never skips.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use super::process::Proc;
use super::{find_program, free_port, temp_dir, wait_for};

/// Headless chromium behind chromedriver; both killed on drop.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    driver: Proc,
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless chromium. Panics (the test
    /// fails) with chromedriver's output if either does not start.
    pub async fn start() -> Browser {
        let driver_bin = find_program(
            "chromedriver",
            &["/usr/bin/chromedriver"],
            "chromium-driver",
        );
        let chromium = find_program("chromium", &["/usr/bin/chromium"], "chromium");
        let dir = temp_dir("browser");
        let port = free_port();
        let mut cmd = Command::new(&driver_bin);
        cmd.arg(format!("--port={port}"));
        let mut driver = Proc::spawn(&format!("chromedriver-{port}"), cmd, dir.path());
        let up = wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
        if up.is_none() {
            panic!(
                "chromedriver ({}) did not listen on port {port}:\n{}",
                driver_bin.display(),
                driver.report()
            );
        }
        // fantoccini's connector builds a rustls config even for plain
        // http; mayfly's rustls has aws-lc-rs and ring both compiled in
        // (through dependencies), so name the provider.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let profile = dir.path().join("profile");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let client = match ClientBuilder::rustls()
            .expect("fantoccini's rustls connector")
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => c,
            Err(e) => panic!(
                "chromium ({}) did not start through chromedriver: {e}\n{}",
                chromium.display(),
                driver.report()
            ),
        };
        Browser {
            client,
            driver,
            dir,
        }
    }

    /// The text of the first element matching `css`, waiting up to 20 s for it.
    pub async fn text(&self, css: &str) -> String {
        self.wait(css).await;
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"))
            .text()
            .await
            .unwrap_or_else(|e| panic!("text of {css}: {e}"))
    }

    /// Waits up to 20 s for an element matching `css`; panics with the
    /// page's URL and source if none appears.
    pub async fn wait(&self, css: &str) {
        let found = self
            .client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await;
        if let Err(e) = found {
            let url = self
                .client
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default();
            let src = self.client.source().await.unwrap_or_default();
            panic!("no {css} on {url} ({e}):\n{src}");
        }
    }

    /// Types `text` into the field matching `css`.
    pub async fn fill(&self, css: &str, text: &str) {
        self.wait(css).await;
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"))
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        self.wait(css).await;
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// The current page's HTML.
    pub async fn source(&self) -> String {
        self.client.source().await.expect("page source")
    }

    /// Saves a PNG screenshot of the current page to `path`.
    pub async fn screenshot(&self, path: &std::path::Path) {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Ends the WebDriver session and chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        self.driver.kill();
        drop(self.dir);
    }
}
