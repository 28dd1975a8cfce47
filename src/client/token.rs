//! Where a bot's workload token comes from: `--token-command` or
//! `--token-file`, then `$MAYFLY_TOKEN`, then the CI environment (GitHub
//! Actions' OIDC endpoint). Every call looks again, so a renewal gets a
//! fresh token where the source gives one.
//!
//! The first source that is *configured* wins and its errors are final: a
//! broken `--token-file` never silently falls back to another identity, since
//! the bot's owner asked for that file and a different token would only fail
//! later with a more confusing policy denial.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use url::{Host, Url};
use zeroize::Zeroizing;

/// Environment variable holding a token directly.
const ENV_TOKEN: &str = "MAYFLY_TOKEN";
/// GitHub Actions sets these when the job has `permissions: id-token: write`.
const GHA_URL: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
const GHA_TOKEN: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";

/// A JWT is a few KiB at most; the cap stops a broken endpoint from filling memory.
const MAX_ANSWER_LEN: usize = 64 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the bot was told to find its token (from the command line).
#[derive(Debug, Clone, Default)]
pub struct TokenSource {
    /// `--token-file PATH`: read the token from this file, trimmed.
    pub token_file: Option<PathBuf>,
    /// `--token-command CMD`: run `sh -c CMD`; its stdout is the token. Run
    /// again for every token (`mayfly exec` renewals).
    pub token_command: Option<String>,
    /// Audience to request from CI OIDC providers; the server's `[[issuer]] audience`.
    pub audience: String,
}

/// A workload token; zeroized on drop and never printed.
pub struct Token(Zeroizing<String>);

impl Token {
    /// The token text, for the `Authorization: Bearer` header and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why no token could be obtained; each message says what to fix and never
/// contains a token.
#[derive(thiserror::Error, Debug)]
pub enum TokenSourceError {
    /// `--token-file` could not be read.
    #[error("cannot read token file {}: check the --token-file path and its permissions", path.display())]
    TokenFileUnreadable {
        /// The path given to `--token-file`.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// `--token-file` holds nothing but whitespace.
    #[error("token file {} is empty: write the workload token into it", path.display())]
    TokenFileEmpty {
        /// The path given to `--token-file`.
        path: PathBuf,
    },
    /// `$MAYFLY_TOKEN` is set but blank, typically an unset CI secret.
    #[error("MAYFLY_TOKEN is set but empty: check the secret it is filled from, or unset it")]
    EnvTokenEmpty,
    /// The token has whitespace or control characters inside it.
    #[error("the token from {origin} contains whitespace or control characters: it must hold exactly one token")]
    MalformedToken {
        /// Where the token came from (never the token itself).
        origin: String,
    },
    /// Only one of the two GitHub Actions variables is set.
    #[error("{present} is set but {missing} is not: run in a GitHub Actions job with `permissions: id-token: write`")]
    GithubActionsIncomplete {
        /// The variable that is set.
        present: &'static str,
        /// The variable that is missing.
        missing: &'static str,
    },
    /// `ACTIONS_ID_TOKEN_REQUEST_URL` cannot be used.
    #[error("ACTIONS_ID_TOKEN_REQUEST_URL is not usable: {reason}")]
    GithubActionsUrl {
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP request to the GitHub Actions OIDC endpoint failed.
    #[error("requesting the GitHub Actions OIDC token failed: check network access to the Actions token endpoint")]
    GithubActionsRequest {
        /// The transport error, with the URL stripped.
        #[source]
        source: reqwest::Error,
    },
    /// The GitHub Actions OIDC endpoint answered with an error status.
    #[error("the GitHub Actions OIDC endpoint answered HTTP {status}: check the job has `permissions: id-token: write`")]
    GithubActionsStatus {
        /// The HTTP status code.
        status: u16,
    },
    /// The GitHub Actions OIDC endpoint answered 2xx with an unusable body.
    #[error("the GitHub Actions OIDC answer is unusable: {reason}")]
    GithubActionsAnswer {
        /// What is wrong with the answer.
        reason: &'static str,
    },
    /// `--token-command` could not be run, failed, or printed nothing. The
    /// command itself is not quoted: it may hold a credential.
    #[error("--token-command {problem}")]
    TokenCommand {
        /// What went wrong, with the end of its stderr (never its stdout).
        problem: String,
    },
    /// No source is configured.
    #[error(
        "no workload token found: looked at --token-file (not given), $MAYFLY_TOKEN (not set) \
         and GitHub Actions ($ACTIONS_ID_TOKEN_REQUEST_URL/$ACTIONS_ID_TOKEN_REQUEST_TOKEN not set; \
         give the job `permissions: id-token: write`)"
    )]
    NotFound,
}

/// Finds the bot's workload token: `--token-file`, then `$MAYFLY_TOKEN`, then
/// GitHub Actions. `env` reads an environment variable (`std::env::var(k).ok()`
/// in production), passed in so tests control it.
pub async fn discover(
    src: &TokenSource,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Token, TokenSourceError> {
    if let Some(command) = &src.token_command {
        return token_command(command).await;
    }
    if let Some(path) = &src.token_file {
        let text = Zeroizing::new(tokio::fs::read_to_string(path).await.map_err(|source| {
            TokenSourceError::TokenFileUnreadable {
                path: path.clone(),
                source,
            }
        })?);
        if text.trim().is_empty() {
            return Err(TokenSourceError::TokenFileEmpty { path: path.clone() });
        }
        tracing::debug!(path = %path.display(), "workload token from --token-file");
        return checked(&text, || format!("token file {}", path.display()));
    }

    if let Some(value) = env(ENV_TOKEN).map(Zeroizing::new) {
        if value.trim().is_empty() {
            return Err(TokenSourceError::EnvTokenEmpty);
        }
        tracing::debug!("workload token from $MAYFLY_TOKEN");
        return checked(&value, || format!("${ENV_TOKEN}"));
    }

    match (env(GHA_URL), env(GHA_TOKEN).map(Zeroizing::new)) {
        (Some(url), Some(bearer)) => {
            tracing::debug!("workload token from the GitHub Actions OIDC endpoint");
            github_actions(&url, &bearer, &src.audience).await
        }
        (Some(_), None) => Err(TokenSourceError::GithubActionsIncomplete {
            present: GHA_URL,
            missing: GHA_TOKEN,
        }),
        (None, Some(_)) => Err(TokenSourceError::GithubActionsIncomplete {
            present: GHA_TOKEN,
            missing: GHA_URL,
        }),
        (None, None) => Err(TokenSourceError::NotFound),
    }
}

/// How long `--token-command` may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `sh -c command` with no stdin and takes its stdout as the token.
/// A failure quotes the end of its stderr, never its stdout.
async fn token_command(command: &str) -> Result<Token, TokenSourceError> {
    let fail = |problem: String| TokenSourceError::TokenCommand { problem };
    let child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot be started: {e}")))?;
    let out = match tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(fail(format!("failed: {e}"))),
        Err(_) => {
            return Err(fail(format!(
                "did not finish within {}s (it was killed)",
                COMMAND_TIMEOUT.as_secs()
            )))
        }
    };
    let stdout = Zeroizing::new(out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = {
            let t = stderr.trim();
            let skip = t.chars().count().saturating_sub(300);
            t.chars().skip(skip).collect()
        };
        let status = match out.status.code() {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".to_string(),
        };
        return Err(fail(if tail.is_empty() {
            format!("failed ({status})")
        } else {
            format!("failed ({status}): {tail}")
        }));
    }
    if stdout.len() > MAX_ANSWER_LEN {
        return Err(fail(format!(
            "printed more than {MAX_ANSWER_LEN} bytes; it must print one token"
        )));
    }
    let text = Zeroizing::new(String::from_utf8(stdout.to_vec()).map_err(|_| {
        fail("printed something that is not UTF-8; it must print one token".into())
    })?);
    if text.trim().is_empty() {
        return Err(fail(
            "printed nothing: it must print the workload token on stdout".into(),
        ));
    }
    tracing::debug!("workload token from --token-command");
    checked(&text, || "--token-command".to_string())
}

/// Trims and rejects inner whitespace/control characters, which would
/// otherwise surface later as an opaque HTTP header error.
fn checked(raw: &str, origin: impl FnOnce() -> String) -> Result<Token, TokenSourceError> {
    let token = raw.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenSourceError::MalformedToken { origin: origin() });
    }
    Ok(Token(Zeroizing::new(token.to_owned())))
}

async fn github_actions(
    base_url: &str,
    bearer: &str,
    audience: &str,
) -> Result<Token, TokenSourceError> {
    let url = github_request_url(base_url, audience)?;
    // No redirects (the shared builder's rule): the bearer token is meant
    // for this endpoint only, and GitHub's endpoint answers directly.
    let client = super::http::build(&super::http::ClientSpec {
        base: &url,
        ca_file: None,
        connect_timeout: CONNECT_TIMEOUT,
        timeout: REQUEST_TIMEOUT,
        user_agent: None,
        identity: None,
    })
    .map_err(|e| match e {
        super::http::HttpClientError::Build(e) => request_error(e),
        // Only a CA file can cause the others, and there is none here.
        other => TokenSourceError::GithubActionsUrl {
            reason: other.to_string(),
        },
    })?;
    let mut response = client
        .get(url)
        .bearer_auth(bearer)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(request_error)?;
    let status = response.status();
    if !status.is_success() {
        // The body is not echoed: it is the endpoint's business, not ours to print.
        return Err(TokenSourceError::GithubActionsStatus {
            status: status.as_u16(),
        });
    }

    let mut body = Zeroizing::new(Vec::new());
    while let Some(chunk) = response.chunk().await.map_err(request_error)? {
        if body.len().saturating_add(chunk.len()) > MAX_ANSWER_LEN {
            return Err(TokenSourceError::GithubActionsAnswer {
                reason: "larger than 64 KiB",
            });
        }
        body.extend_from_slice(&chunk);
    }

    #[derive(serde::Deserialize)]
    struct Answer {
        value: Option<String>,
    }
    let answer: Answer =
        serde_json::from_slice(&body).map_err(|_| TokenSourceError::GithubActionsAnswer {
            reason: "not a JSON object",
        })?;
    let value = Zeroizing::new(answer.value.ok_or(TokenSourceError::GithubActionsAnswer {
        reason: "no \"value\" string",
    })?);
    if value.trim().is_empty() {
        return Err(TokenSourceError::GithubActionsAnswer {
            reason: "\"value\" is empty",
        });
    }
    checked(&value, || "the GitHub Actions OIDC answer".to_owned())
}

/// `reqwest` errors print their URL; strip it so nothing from the
/// environment leaks into logs beyond what we choose to show.
fn request_error(source: reqwest::Error) -> TokenSourceError {
    TokenSourceError::GithubActionsRequest {
        source: source.without_url(),
    }
}

/// Appends `audience=<audience>` to the endpoint's query (which already
/// carries `api-version`), refusing plain http except to loopback so the
/// request token never crosses a network in clear text.
fn github_request_url(base: &str, audience: &str) -> Result<Url, TokenSourceError> {
    let mut url = Url::parse(base).map_err(|e| TokenSourceError::GithubActionsUrl {
        reason: e.to_string(),
    })?;
    let loopback = match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => {
            return Err(TokenSourceError::GithubActionsUrl {
                reason: "it must be https (plain http only to loopback)".to_owned(),
            })
        }
    }
    // Like @actions/core, an empty audience means the provider's default.
    if !audience.is_empty() {
        let pair = format!("audience={}", encode_component(audience));
        let query = match url.query() {
            Some(existing) if !existing.is_empty() => format!("{existing}&{pair}"),
            _ => pair,
        };
        url.set_query(Some(&query));
    }
    Ok(url)
}

/// Percent-encodes everything but RFC 3986 unreserved characters, as
/// JavaScript's `encodeURIComponent` does for @actions/core (space is `%20`,
/// not `+`).
fn encode_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const SECRET: &str = "eyJhbGciOiJSUzI1NiJ9.secret-payload.sig";

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    fn source(token_file: Option<PathBuf>) -> TokenSource {
        TokenSource {
            token_file,
            token_command: None,
            audience: "mayfly".to_owned(),
        }
    }

    /// GitHub variables pointing at a closed port: if a test reaches them, it fails.
    const UNREACHABLE_GHA: [(&str, &str); 2] = [
        (GHA_URL, "http://127.0.0.1:9/token?api-version=2.0"),
        (GHA_TOKEN, "request-token"),
    ];

    fn command(cmd: &str) -> TokenSource {
        TokenSource {
            token_command: Some(cmd.to_owned()),
            ..source(None)
        }
    }

    #[tokio::test]
    async fn token_command_stdout_is_the_token_and_it_runs_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let cmd = format!(
            "echo x >> {0}; echo \"tok-$(wc -l < {0})\"",
            count.display()
        );
        let env = env_of(&[(ENV_TOKEN, "from-env")]);
        let first = discover(&command(&cmd), &env).await.unwrap();
        let second = discover(&command(&cmd), &env).await.unwrap();
        assert_eq!(first.expose(), "tok-1");
        assert_eq!(second.expose(), "tok-2");
    }

    #[tokio::test]
    async fn failing_token_command_quotes_its_stderr_not_its_stdout() {
        let env = env_of(&[]);
        let err = discover(
            &command("echo secret-token; echo 'issuer down' >&2; exit 4"),
            &env,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("exit status 4") && err.contains("issuer down"),
            "{err}"
        );
        assert!(!err.contains("secret-token"), "{err}");
        let err = discover(&command("true"), &env)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("printed nothing"), "{err}");
    }

    #[tokio::test]
    async fn token_file_wins_and_is_trimmed() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("token");
        std::fs::write(&path, format!("\n  {SECRET}  \n")).expect("write");
        let env = env_of(&[
            (ENV_TOKEN, "from-env"),
            UNREACHABLE_GHA[0],
            UNREACHABLE_GHA[1],
        ]);
        let token = discover(&source(Some(path)), &env).await.expect("token");
        assert_eq!(token.expose(), SECRET);
    }

    #[tokio::test]
    async fn unreadable_token_file_names_the_path_and_does_not_fall_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("missing-token");
        let env = env_of(&[(ENV_TOKEN, SECRET)]);
        let err = discover(&source(Some(path.clone())), &env)
            .await
            .expect_err("missing file");
        assert!(
            matches!(err, TokenSourceError::TokenFileUnreadable { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(!msg.contains(SECRET));
    }

    #[tokio::test]
    async fn blank_token_file_names_the_path() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("token");
        std::fs::write(&path, " \n\t\n").expect("write");
        let err = discover(&source(Some(path.clone())), &env_of(&[]))
            .await
            .expect_err("empty");
        assert!(
            matches!(err, TokenSourceError::TokenFileEmpty { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[tokio::test]
    async fn token_file_with_two_lines_is_rejected_without_echoing_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{SECRET}\n{SECRET}\n")).expect("write");
        let err = discover(&source(Some(path)), &env_of(&[]))
            .await
            .expect_err("two tokens");
        assert!(
            matches!(err, TokenSourceError::MalformedToken { .. }),
            "{err:?}"
        );
        assert!(!err.to_string().contains(SECRET));
        assert!(!format!("{err:?}").contains(SECRET));
    }

    #[tokio::test]
    async fn env_token_is_used_before_github_actions() {
        let env = env_of(&[
            (ENV_TOKEN, &format!(" {SECRET}\n")),
            UNREACHABLE_GHA[0],
            UNREACHABLE_GHA[1],
        ]);
        let token = discover(&source(None), &env).await.expect("token");
        assert_eq!(token.expose(), SECRET);
    }

    #[tokio::test]
    async fn empty_env_token_is_an_error_not_a_fallback() {
        let env = env_of(&[(ENV_TOKEN, "  "), UNREACHABLE_GHA[0], UNREACHABLE_GHA[1]]);
        let err = discover(&source(None), &env).await.expect_err("empty");
        assert!(matches!(err, TokenSourceError::EnvTokenEmpty), "{err:?}");
        assert!(err.to_string().contains("MAYFLY_TOKEN"));
    }

    #[tokio::test]
    async fn nothing_configured_lists_all_three_places() {
        let err = discover(&source(None), &env_of(&[]))
            .await
            .expect_err("none");
        assert!(matches!(err, TokenSourceError::NotFound), "{err:?}");
        let msg = err.to_string();
        for place in [
            "--token-file",
            "$MAYFLY_TOKEN",
            "GitHub Actions",
            GHA_URL,
            GHA_TOKEN,
        ] {
            assert!(msg.contains(place), "{place} missing from: {msg}");
        }
    }

    #[tokio::test]
    async fn half_configured_github_actions_names_the_missing_variable() {
        let err = discover(&source(None), &env_of(&[UNREACHABLE_GHA[0]]))
            .await
            .expect_err("half");
        assert!(
            err.to_string().contains(&format!("{GHA_TOKEN} is not")),
            "{err}"
        );
        let err = discover(&source(None), &env_of(&[UNREACHABLE_GHA[1]]))
            .await
            .expect_err("half");
        assert!(
            err.to_string().contains(&format!("{GHA_URL} is not")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn plain_http_to_a_remote_host_is_refused() {
        let env = env_of(&[
            (GHA_URL, "http://token.example.com/x?api-version=2.0"),
            (GHA_TOKEN, "request-token"),
        ]);
        let err = discover(&source(None), &env).await.expect_err("http");
        assert!(
            matches!(err, TokenSourceError::GithubActionsUrl { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn audience_is_appended_with_the_right_separator_and_encoded() {
        let url =
            github_request_url("https://gh.example/t?api-version=2.0", "mayfly").expect("url");
        assert_eq!(
            url.as_str(),
            "https://gh.example/t?api-version=2.0&audience=mayfly"
        );
        let url =
            github_request_url("https://gh.example/t", "https://ca.example/a b&c=d").expect("url");
        assert_eq!(
            url.as_str(),
            "https://gh.example/t?audience=https%3A%2F%2Fca.example%2Fa%20b%26c%3Dd"
        );
        let url = github_request_url("https://gh.example/t?", "m").expect("url");
        assert_eq!(url.as_str(), "https://gh.example/t?audience=m");
        let url = github_request_url("https://gh.example/t?a=1", "").expect("url");
        assert_eq!(url.as_str(), "https://gh.example/t?a=1");
    }

    #[test]
    fn token_debug_is_redacted() {
        let token = Token(Zeroizing::new(SECRET.to_owned()));
        assert_eq!(format!("{token:?}"), "[redacted]");
    }

    /// What the fake GitHub endpoint saw.
    #[derive(Debug)]
    struct Seen {
        target: String,
        authorization: Option<String>,
    }

    /// Serves one HTTP request: `answer` decides status and body from what was seen.
    async fn fake_github(
        answer: fn(&Seen) -> (u16, String),
    ) -> (String, tokio::task::JoinHandle<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handle = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.expect("read");
                assert!(n > 0, "client hung up mid-request");
                request.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8_lossy(&request).into_owned();
            let mut lines = text.split("\r\n");
            let request_line = lines.next().unwrap_or_default().to_owned();
            let target = request_line
                .split(' ')
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            let authorization = lines.find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("authorization")
                    .then(|| value.trim().to_owned())
            });
            let seen = Seen {
                target,
                authorization,
            };
            let (status, body) = answer(&seen);
            let response = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes()).await.expect("write");
            seen
        });
        (format!("http://{addr}/idtoken?api-version=2.0"), handle)
    }

    fn expected_request(seen: &Seen) -> bool {
        seen.authorization.as_deref() == Some("Bearer request-token")
            && seen.target == "/idtoken?api-version=2.0&audience=mayfly%20ca"
    }

    #[tokio::test]
    async fn github_actions_token_is_fetched_with_bearer_and_audience() {
        let (url, server) = fake_github(|seen| {
            if expected_request(seen) {
                (200, format!("{{\"count\":1,\"value\":\"{SECRET}\"}}"))
            } else {
                (401, "{}".to_owned())
            }
        })
        .await;
        let env = env_of(&[(GHA_URL, &url), (GHA_TOKEN, "request-token")]);
        let src = TokenSource {
            token_file: None,
            token_command: None,
            audience: "mayfly ca".to_owned(),
        };
        let result = discover(&src, &env).await;
        let seen = server.await.expect("server");
        assert!(expected_request(&seen), "unexpected request: {seen:?}");
        assert_eq!(result.expect("token").expose(), SECRET);
    }

    #[tokio::test]
    async fn github_actions_error_status_says_what_to_fix() {
        let (url, server) = fake_github(|_| (403, format!("{{\"value\":\"{SECRET}\"}}"))).await;
        let env = env_of(&[(GHA_URL, &url), (GHA_TOKEN, "request-token")]);
        let err = discover(&source(None), &env).await.expect_err("403");
        server.await.expect("server");
        assert!(
            matches!(err, TokenSourceError::GithubActionsStatus { status: 403 }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("id-token: write"), "{msg}");
        assert!(!msg.contains(SECRET) && !msg.contains("request-token"));
    }

    #[tokio::test]
    async fn github_actions_answer_without_value_is_rejected() {
        let (url, server) = fake_github(|_| (200, "{\"count\":0}".to_owned())).await;
        let env = env_of(&[(GHA_URL, &url), (GHA_TOKEN, "request-token")]);
        let err = discover(&source(None), &env).await.expect_err("no value");
        server.await.expect("server");
        assert!(
            matches!(err, TokenSourceError::GithubActionsAnswer { .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn github_actions_unreachable_endpoint_is_a_request_error_without_the_url() {
        let env = env_of(&UNREACHABLE_GHA);
        let err = discover(&source(None), &env)
            .await
            .expect_err("closed port");
        assert!(
            matches!(err, TokenSourceError::GithubActionsRequest { .. }),
            "{err:?}"
        );
        // The host may show up in the connect error, the path and query may not.
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("api-version"), "{shown}");
    }
}
