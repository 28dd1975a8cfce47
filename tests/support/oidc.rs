//! A real OpenID Connect provider: `node tests/oidc/provider.mjs`
//! (panva/oidc-provider) on a loopback port.
//!
//! It issues client_credentials access tokens that are JWTs with
//! `aud = "mayfly"`, signed with the algorithm each client is configured
//! for, and publishes discovery and a JWKS, like GitHub Actions or GitLab do
//! for their workload tokens. Tests can also forge tokens with the
//! provider's own private keys (expired, wrong audience, ...).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::http;
use super::process::Proc;
use super::{find_program, free_port, repo_root, run_locked, shared_tmp, temp_dir, wait_for};

/// The resource indicator sent with token requests.
pub const RESOURCE: &str = "https://mayfly.test";
/// The audience the provider puts in access tokens (unless a client overrides it).
pub const AUDIENCE: &str = "mayfly";
/// Lifetime of issued access tokens, in seconds.
pub const ACCESS_TOKEN_TTL: u64 = 300;

/// How long one node process may take to print READY before it is killed
/// and another one is started (up to [`START_ATTEMPTS`] in all). Alone it
/// starts in about a second. Twice in CI a provider printed nothing within
/// 60 s and then 180 s while the other providers of the same test binary
/// started; the report of such a start says where its threads waited.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Node processes tried before a test fails because its provider does not
/// start (a port taken by another program, or a start that hangs).
const START_ATTEMPTS: usize = 3;

/// One OAuth client of the provider: a workload with its token claims.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// OAuth client id; also the token's `sub` unless `claims.sub` is set.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: String,
    /// JWS algorithm of its tokens: "RS256", "ES256" or "EdDSA".
    pub alg: String,
    /// Extra claims in its tokens, e.g. `{"repository": "acme/api"}`.
    pub claims: Value,
    /// `aud` of its tokens (default "mayfly").
    pub audience: Option<String>,
    /// "client_secret_basic" (default) or "client_secret_post".
    pub auth_method: Option<String>,
}

impl ClientSpec {
    /// A client with a derived secret, no extra claims and aud "mayfly".
    pub fn new(client_id: &str, alg: &str) -> ClientSpec {
        ClientSpec {
            client_id: client_id.to_string(),
            client_secret: format!("{client_id}-secret"),
            alg: alg.to_string(),
            claims: json!({}),
            audience: None,
            auth_method: None,
        }
    }

    /// Sets the extra claims (an object) of this client's tokens.
    pub fn claims(mut self, claims: Value) -> ClientSpec {
        assert!(claims.is_object(), "client claims must be a JSON object");
        self.claims = claims;
        self
    }

    /// Sets a different `aud` for this client's tokens.
    pub fn audience(mut self, audience: &str) -> ClientSpec {
        self.audience = Some(audience.to_string());
        self
    }

    /// Authenticates this client with client_secret_post instead of _basic.
    pub fn secret_post(mut self) -> ClientSpec {
        self.auth_method = Some("client_secret_post".to_string());
        self
    }
}

/// A private signing key of the provider, as written to `keys_out`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ProviderKey {
    /// Key id, also in the JWKS and in token headers.
    pub kid: String,
    /// "RS256", "ES256" or "EdDSA".
    pub alg: String,
    /// PKCS#8 PEM of the private key.
    pub private_pem: String,
}

/// A running OIDC provider; killed on drop.
pub struct Oidc {
    /// `http://127.0.0.1:PORT`, exactly the `iss` of its tokens.
    pub issuer: String,
    /// The token endpoint from discovery.
    pub token_endpoint: String,
    /// The JWKS URI from discovery.
    pub jwks_uri: String,
    /// The provider's private keys, one per algorithm.
    pub keys: Vec<ProviderKey>,
    clients: Vec<ClientSpec>,
    proc: Proc,
    dir: tempfile::TempDir,
}

impl Oidc {
    /// Starts a provider that knows `clients`. Panics, with node's output,
    /// if none of [`START_ATTEMPTS`] node processes is ready within
    /// [`START_TIMEOUT`].
    pub fn start(clients: &[ClientSpec]) -> Oidc {
        Oidc::start_with_people(clients, &json!([]), &json!({}))
    }

    /// Starts a provider that also knows human clients (`people`, each
    /// `{"client_id", "client_secret", "redirect_uris"}`, authorization
    /// code flow) and the `accounts` people log in as (`{"alice":
    /// {"groups": ["sre"]}}`), through its login form.
    pub fn start_with_people(clients: &[ClientSpec], people: &Value, accounts: &Value) -> Oidc {
        ensure_node_modules();
        let node = find_program("node", &[], "nodejs (version 20 or later)");
        let dir = temp_dir("oidc");
        let mut failures = Vec::new();
        for _attempt in 0..START_ATTEMPTS {
            let port = free_port();
            match start_on(&node, dir.path(), port, clients, people, accounts) {
                Ok((proc, keys)) => {
                    let issuer = format!("http://127.0.0.1:{port}");
                    let mut oidc = Oidc {
                        token_endpoint: String::new(),
                        jwks_uri: String::new(),
                        issuer,
                        keys,
                        clients: clients.to_vec(),
                        proc,
                        dir,
                    };
                    oidc.discover();
                    return oidc;
                }
                Err((report, retry)) => {
                    failures.push(report);
                    if !retry {
                        break;
                    }
                }
            }
        }
        panic!(
            "the OIDC provider (node tests/oidc/provider.mjs) did not start:\n{}",
            failures.join("\n--- next attempt\n")
        );
    }

    fn discover(&mut self) {
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let doc = http::get(&url)
            .unwrap_or_else(|e| panic!("GET {url}: {e}\n{}", self.proc.report()))
            .json();
        assert_eq!(doc["issuer"], json!(self.issuer), "discovery issuer");
        self.token_endpoint = doc["token_endpoint"]
            .as_str()
            .expect("discovery has token_endpoint")
            .to_string();
        self.jwks_uri = doc["jwks_uri"]
            .as_str()
            .expect("discovery has jwks_uri")
            .to_string();
    }

    /// The discovery URL (what mayfly's `[[issuer]] url` points at is the issuer itself).
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// A `[[issuer]]` block for mayfly.toml naming this provider.
    pub fn issuer_toml(&self, name: &str) -> String {
        format!(
            "\n[[issuer]]\nname = \"{name}\"\nurl = \"{}\"\naudience = \"{AUDIENCE}\"\n",
            self.issuer
        )
    }

    /// The provider's public JWKS, as served.
    pub fn jwks(&self) -> Value {
        http::get(&self.jwks_uri)
            .unwrap_or_else(|e| panic!("GET {}: {e}", self.jwks_uri))
            .json()
    }

    /// A fresh access token (JWT) for `client_id`, by the client_credentials
    /// grant with `resource=https://mayfly.test`. Panics with the provider's
    /// answer if it refuses.
    pub fn token(&self, client_id: &str) -> String {
        let resp = self.token_response(client_id, Some(RESOURCE));
        assert_eq!(
            resp.status,
            200,
            "token request for {client_id} refused: {}\n{}",
            resp.text(),
            self.log()
        );
        resp.json()["access_token"]
            .as_str()
            .expect("token response has access_token")
            .to_string()
    }

    /// The raw token endpoint answer for `client_id`, for tests of failures.
    pub fn token_response(&self, client_id: &str, resource: Option<&str>) -> http::Response {
        let client = self.client(client_id);
        let mut fields = vec![("grant_type", "client_credentials")];
        if let Some(r) = resource {
            fields.push(("resource", r));
        }
        let basic;
        let mut headers = Vec::new();
        if client.auth_method.as_deref() == Some("client_secret_post") {
            fields.push(("client_id", client.client_id.as_str()));
            fields.push(("client_secret", client.client_secret.as_str()));
        } else {
            // RFC 6749 2.3.1: id and secret are form-encoded before base64.
            let creds = format!(
                "{}:{}",
                http::form_urlencode(&client.client_id),
                http::form_urlencode(&client.client_secret)
            );
            basic = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(creds)
            );
            headers.push(("Authorization", basic.as_str()));
        }
        http::post_form(&self.token_endpoint, &headers, &fields)
            .unwrap_or_else(|e| panic!("POST {}: {e}\n{}", self.token_endpoint, self.log()))
    }

    /// The claims a real token of `client_id` would carry, valid from now
    /// for the configured TTL: the client's extra claims plus iss, sub, aud,
    /// iat, exp, jti, client_id. Change them and pass them to [`Oidc::forge`].
    pub fn valid_claims(&self, client_id: &str) -> Value {
        let client = self.client(client_id);
        let now = unix_now();
        let mut claims = client.claims.clone();
        let obj = claims.as_object_mut().expect("claims are an object");
        obj.entry("sub").or_insert_with(|| json!(client.client_id));
        obj.insert("iss".into(), json!(self.issuer));
        obj.insert(
            "aud".into(),
            json!(client.audience.as_deref().unwrap_or(AUDIENCE)),
        );
        obj.insert("iat".into(), json!(now));
        obj.insert("exp".into(), json!(now + ACCESS_TOKEN_TTL));
        obj.insert(
            "jti".into(),
            json!(format!("forged-{}", uuid::Uuid::new_v4())),
        );
        obj.insert("client_id".into(), json!(client.client_id));
        claims
    }

    /// A JWT with `claims`, signed by the provider's own private key for
    /// `alg` ("RS256", "ES256" or "EdDSA") with that key's `kid` and
    /// `typ: at+jwt`, just like a real token.
    pub fn forge(&self, alg: &str, claims: Value) -> String {
        let algorithm: Algorithm = alg
            .parse()
            .unwrap_or_else(|e| panic!("unknown alg {alg}: {e:?}"));
        let mut header = Header::new(algorithm);
        header.typ = Some("at+jwt".to_string());
        self.forge_with_header(header, claims)
    }

    /// Like [`Oidc::forge`] with a header of your own: the key is chosen by
    /// `header.alg`; `kid` is filled in if `None`.
    pub fn forge_with_header(&self, mut header: Header, claims: Value) -> String {
        let alg = format!("{:?}", header.alg);
        let key = self.key(&alg);
        header.kid.get_or_insert_with(|| key.kid.clone());
        let pem = key.private_pem.as_bytes();
        let encoding = match header.alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => EncodingKey::from_rsa_pem(pem),
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            other => panic!("the provider has no key for {other:?}"),
        }
        .unwrap_or_else(|e| panic!("load the provider's {alg} key: {e}"));
        jsonwebtoken::encode(&header, &claims, &encoding)
            .unwrap_or_else(|e| panic!("sign a {alg} token: {e}"))
    }

    /// The provider's private key for an algorithm family ("RS256" matches
    /// any RS*/PS*).
    pub fn key(&self, alg: &str) -> &ProviderKey {
        let want = match alg {
            a if a.starts_with("RS") || a.starts_with("PS") => "RS256",
            a if a.starts_with("ES") => "ES256",
            a => a,
        };
        self.keys
            .iter()
            .find(|k| k.alg == want)
            .unwrap_or_else(|| panic!("the provider has no {alg} key"))
    }

    /// The provider's stdout and stderr so far.
    pub fn log(&self) -> String {
        format!(
            "--- oidc stdout\n{}\n--- oidc stderr\n{}",
            self.proc.stdout(),
            self.proc.stderr()
        )
    }

    /// The provider's working directory (config.json, keys.json, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn client(&self, client_id: &str) -> &ClientSpec {
        self.clients
            .iter()
            .find(|c| c.client_id == client_id)
            .unwrap_or_else(|| panic!("no OIDC client {client_id:?} was configured"))
    }
}

/// Starts node once on `port`. On failure returns node's report and
/// whether another try is worth it (the port was taken, or node printed
/// nothing within [`START_TIMEOUT`]).
fn start_on(
    node: &Path,
    dir: &Path,
    port: u16,
    clients: &[ClientSpec],
    people: &Value,
    accounts: &Value,
) -> Result<(Proc, Vec<ProviderKey>), (String, bool)> {
    let keys_out = dir.join("keys.json");
    let config_path = dir.join("config.json");
    let config = json!({
        "port": port,
        "keys_out": keys_out,
        "access_token_ttl": ACCESS_TOKEN_TTL,
        "clients": clients.iter().map(|c| {
            let mut v = json!({
                "client_id": c.client_id,
                "client_secret": c.client_secret,
                "alg": c.alg,
                "claims": c.claims,
            });
            if let Some(a) = &c.audience { v["audience"] = json!(a); }
            if let Some(m) = &c.auth_method { v["token_endpoint_auth_method"] = json!(m); }
            v
        }).collect::<Vec<_>>(),
        "people": people,
        "accounts": accounts,
    });
    std::fs::write(
        &config_path,
        serde_json::to_vec_pretty(&config).expect("serialize config"),
    )
    .expect("write the provider's config.json");

    let mut cmd = Command::new(node);
    cmd.arg(repo_root().join("tests/oidc/provider.mjs"))
        .arg(&config_path)
        .current_dir(dir);
    let mut proc = Proc::spawn(&format!("oidc-{port}"), cmd, dir);
    let ready = format!("READY http://127.0.0.1:{port}");
    let outcome = wait_for(START_TIMEOUT, Duration::from_millis(25), || {
        if proc.stdout().lines().any(|l| l.trim() == ready) {
            Some(true)
        } else if proc.exited().is_some() {
            Some(false)
        } else {
            None
        }
    });
    if outcome != Some(true) {
        let port_taken = proc.stderr().contains("EADDRINUSE");
        if outcome.is_none() {
            let waits = proc.where_it_waits();
            proc.kill();
            return Err((
                format!(
                    "no READY line within {START_TIMEOUT:?} ({waits})\n{}",
                    proc.report()
                ),
                true,
            ));
        }
        return Err((proc.report(), port_taken));
    }
    let keys: Vec<ProviderKey> = serde_json::from_slice(
        &std::fs::read(&keys_out).unwrap_or_else(|e| panic!("read {}: {e}", keys_out.display())),
    )
    .expect("keys.json is a list of {kid, alg, private_pem}");
    Ok((proc, keys))
}

/// Installs tests/oidc/node_modules once (npm ci from package-lock.json),
/// under a file lock so parallel tests and test binaries don't race.
pub fn ensure_node_modules() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir: PathBuf = repo_root().join("tests/oidc");
        if dir
            .join("node_modules/oidc-provider/package.json")
            .is_file()
        {
            return;
        }
        find_program("npm", &[], "npm");
        run_locked(
            &shared_tmp().join("oidc-npm-install.lock"),
            "test -f node_modules/oidc-provider/package.json && exit 0; \
             if test -f package-lock.json; then npm ci --no-audit --no-fund; \
             else npm install --no-audit --no-fund; fi",
            &dir,
            "npm install in tests/oidc",
        );
    });
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}
