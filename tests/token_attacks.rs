//! Attacks on token verification through the real HTTP API: a rewritten
//! ECDSA signature replaying a used token, a `crit` header, an `exp` beyond
//! what the store holds, issuer keys fetched through a redirect to another
//! origin, and issuer keys used long after the issuer became unreachable.
//! Tokens are signed by a test issuer (`support::issuer`) whose keys the
//! test holds, so each token is exactly the bytes the attack needs.

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use support::issuer::{Route, TestIssuer};
use support::{http, keygen_ed25519, Mayfly};

/// A role of issuer `issuer` for tokens whose `sub` is "bot".
fn role(issuer: &str) -> String {
    format!(
        "description = \"token attack tests\"\nowner = \"sec@example.com\"\nissuer = \"{issuer}\"\n\
         principals = [\"deploy\"]\nmax_ttl = \"10m\"\ndefault_ttl = \"5m\"\n\n[claims]\nsub = \"bot\"\n"
    )
}

struct Client {
    ca: Mayfly,
    public_key: String,
    _dir: tempfile::TempDir,
}

impl Client {
    fn new(ca: Mayfly) -> Client {
        let dir = support::temp_dir("token-attacks");
        let (_, public_key) = keygen_ed25519(dir.path());
        Client {
            ca,
            public_key,
            _dir: dir,
        }
    }

    /// POST /v1/certs/user for `role` with `token`.
    fn request(&self, role: &str, token: &str) -> http::Response {
        let auth = format!("Bearer {token}");
        http::post_json(
            &format!("{}/v1/certs/user", self.ca.url()),
            &[("Authorization", auth.as_str())],
            &json!({"role": role, "public_key": self.public_key}),
        )
        .expect("POST /v1/certs/user")
    }

    #[track_caller]
    fn expect_cert(&self, r: &http::Response) {
        assert_eq!(
            r.status,
            200,
            "{}\n--- mayfly log\n{}",
            r.text(),
            self.ca.stderr_log()
        );
        assert!(r.json()["certificate"].is_string(), "{}", r.text());
    }

    #[track_caller]
    fn expect_error(&self, r: &http::Response, status: u16, code: &str) -> String {
        assert_eq!(
            r.status,
            status,
            "{}\n--- mayfly log\n{}",
            r.text(),
            self.ca.stderr_log()
        );
        let v = r.json();
        assert_eq!(v["error"], json!(code), "{v}");
        assert!(v.get("certificate").is_none(), "{v}");
        v["message"].as_str().expect("message").to_string()
    }

    fn metrics(&self) -> String {
        http::get(&format!("{}/metrics", self.ca.url()))
            .expect("GET /metrics")
            .text()
    }
}

// ---- 4: ECDSA signature malleability --------------------------------------

/// Order of the P-256 group.
const P256_N: &str = "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551";
/// Order of the P-384 group.
const P384_N: &str = "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// `a - b` for big-endian unsigned integers of equal length, `a > b`.
fn sub_be(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; a.len()];
    let mut borrow = 0i16;
    for i in (0..a.len()).rev() {
        let mut d = i16::from(a[i]) - i16::from(b[i]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        out[i] = d as u8;
    }
    assert_eq!(borrow, 0, "a > b");
    out
}

/// The same JWS with its ECDSA signature `r || s` rewritten as `r || n - s`,
/// which verifies just as well.
fn malleate(token: &str, n_hex: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (input, sig) = token.rsplit_once('.').expect("three parts");
    let sig = b64.decode(sig).expect("signature is base64url");
    let n = unhex(n_hex);
    assert_eq!(sig.len(), 2 * n.len(), "raw r || s of the curve's size");
    let (r, s) = sig.split_at(n.len());
    let mut rewritten = r.to_vec();
    rewritten.extend(sub_be(&n, s));
    assert_ne!(rewritten, sig);
    format!("{input}.{}", b64.encode(rewritten))
}

/// Verifies `token` against the issuer's published key, as any relying
/// party would: proves the rewritten token is validly signed.
fn verifies(issuer: &TestIssuer, alg: Algorithm, token: &str) {
    let jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(issuer.jwk(alg).clone()).expect("JWK parses");
    let key = DecodingKey::from_jwk(&jwk).expect("decoding key");
    let mut v = Validation::new(alg);
    v.set_audience(&["mayfly"]);
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .unwrap_or_else(|e| panic!("the rewritten {alg:?} token must verify: {e}"));
}

#[test]
fn ecdsa_token_without_jti_with_s_rewritten_as_n_minus_s_is_a_replay() {
    let issuer = TestIssuer::start();
    let client = Client::new(Mayfly::start(
        &issuer.issuer_toml("ci", ""),
        &[("deploy", &role("ci"))],
    ));
    for (alg, n, malleated_first) in [
        (Algorithm::ES256, P256_N, false),
        (Algorithm::ES384, P384_N, true),
    ] {
        let mut claims = issuer.claims("bot");
        claims.as_object_mut().expect("object").remove("jti");
        let token = issuer.sign(alg, &claims);
        let rewritten = malleate(&token, n);
        assert_ne!(rewritten, token);
        verifies(&issuer, alg, &token);
        verifies(&issuer, alg, &rewritten);
        // Either one alone mints (ES384: the rewritten one, so mayfly itself
        // shows it accepts that signature); the other is then a replay.
        let (first, second) = if malleated_first {
            (&rewritten, &token)
        } else {
            (&token, &rewritten)
        };
        client.expect_cert(&client.request("deploy", first));
        client.expect_error(&client.request("deploy", second), 401, "token_replayed");
    }
}

// ---- 11: crit --------------------------------------------------------------

#[test]
fn token_with_a_crit_header_is_refused_with_401() {
    let issuer = TestIssuer::start();
    let client = Client::new(Mayfly::start(
        &issuer.issuer_toml("ci", ""),
        &[("deploy", &role("ci"))],
    ));
    let header = |extra: Value| {
        let mut h = json!({"alg": "ES256", "typ": "JWT", "kid": "es256-1"});
        for (k, v) in extra.as_object().expect("object") {
            h[k] = v.clone();
        }
        h
    };
    // The same header without crit, signed the same way, is accepted.
    let plain =
        issuer.sign_with_header(Algorithm::ES256, &header(json!({})), &issuer.claims("bot"));
    client.expect_cert(&client.request("deploy", &plain));
    for (crit, says) in [
        (json!({"crit": ["b64"], "b64": false}), "[\"b64\"]"),
        (
            json!({"crit": ["urn:example:policy"]}),
            "urn:example:policy",
        ),
        (json!({"crit": []}), "malformed"),
        (json!({"crit": "b64"}), "malformed"),
    ] {
        let token = issuer.sign_with_header(
            Algorithm::ES256,
            &header(crit.clone()),
            &issuer.claims("bot"),
        );
        let message = client.expect_error(
            &client.request("deploy", &token),
            401,
            "unsupported_critical_header",
        );
        assert!(message.contains(says), "{crit}: {message}");
        assert!(message.contains("crit"), "{crit}: {message}");
    }
}

// ---- 12a: exp beyond i64 ---------------------------------------------------

#[test]
fn token_with_exp_beyond_i64_stays_replay_protected_across_a_restart() {
    let issuer = TestIssuer::start();
    let mut client = Client::new(Mayfly::start(
        &issuer.issuer_toml("ci", ""),
        &[("deploy", &role("ci"))],
    ));
    let mut with_jti = issuer.claims("bot");
    with_jti["exp"] = json!((1u64 << 63) + 5);
    let mut without_jti = issuer.claims("bot");
    without_jti["exp"] = json!(u64::MAX);
    without_jti.as_object_mut().expect("object").remove("jti");
    let tokens = [
        issuer.sign(Algorithm::ES256, &with_jti),
        issuer.sign(Algorithm::ES256, &without_jti),
    ];
    for t in &tokens {
        client.expect_cert(&client.request("deploy", t));
        client.expect_error(&client.request("deploy", t), 401, "token_replayed");
    }
    // The replay cache is refilled from the audit log at start.
    client.ca.restart();
    for t in &tokens {
        client.expect_error(&client.request("deploy", t), 401, "token_replayed");
    }
}

// ---- 10: redirects of discovery and JWKS -----------------------------------

#[test]
fn issuer_keys_redirected_to_another_origin_are_refused_and_same_origin_is_followed() {
    // `elsewhere` serves the very same keys and a discovery document naming
    // the redirected issuers: only the origin check can stop them.
    let elsewhere = TestIssuer::start();
    let jwks_cross = TestIssuer::start();
    let disco_cross = TestIssuer::start();
    let same = TestIssuer::start();
    let disco = "/.well-known/openid-configuration";
    let Some(Route::Json(keys_of_jwks_cross)) = jwks_cross.route_of("/jwks") else {
        panic!("jwks route")
    };
    elsewhere.route("/jwks-for-a", Route::Json(keys_of_jwks_cross));
    jwks_cross.route(
        "/jwks",
        Route::Redirect(format!("{}/jwks-for-a", elsewhere.url)),
    );
    let Some(Route::Json(keys_of_disco_cross)) = disco_cross.route_of("/jwks") else {
        panic!("jwks route")
    };
    elsewhere.route("/jwks-for-b", Route::Json(keys_of_disco_cross));
    elsewhere.route(
        "/disco-for-b",
        Route::Json(
            json!({"issuer": disco_cross.url, "jwks_uri": format!("{}/jwks-for-b", elsewhere.url)}),
        ),
    );
    disco_cross.route(
        disco,
        Route::Redirect(format!("{}/disco-for-b", elsewhere.url)),
    );
    // Two hops within the origin are followed.
    let Some(Route::Json(keys_of_same)) = same.route_of("/jwks") else {
        panic!("jwks route")
    };
    same.route("/keys", Route::Json(keys_of_same));
    same.route("/jwks", Route::Redirect(format!("{}/moved", same.url)));
    same.route("/moved", Route::Redirect("/keys".into()));

    let config = [
        jwks_cross.issuer_toml("jwks-cross", ""),
        disco_cross.issuer_toml("disco-cross", ""),
        same.issuer_toml("same", ""),
    ]
    .concat();
    let client = Client::new(Mayfly::start(
        &config,
        &[
            ("jwks-cross", &role("jwks-cross")),
            ("disco-cross", &role("disco-cross")),
            ("same", &role("same")),
        ],
    ));

    let token = same.sign(Algorithm::ES256, &same.claims("bot"));
    client.expect_cert(&client.request("same", &token));
    assert!(same.hits("/keys") >= 1);

    for (role, issuer) in [("jwks-cross", &jwks_cross), ("disco-cross", &disco_cross)] {
        let token = issuer.sign(Algorithm::ES256, &issuer.claims("bot"));
        client.expect_error(&client.request(role, &token), 503, "issuer_unavailable");
    }
    // Nothing was fetched from the other origin, and the log says why.
    assert_eq!(elsewhere.hits("/jwks-for-a"), 0);
    assert_eq!(elsewhere.hits("/disco-for-b"), 0);
    assert_eq!(elsewhere.hits("/jwks-for-b"), 0);
    let log = client.ca.stderr_log();
    for from in [&jwks_cross.url, &disco_cross.url] {
        let refused = format!(
            "cross-origin redirect refused: {from} redirected to {}",
            elsewhere.url
        );
        assert!(log.contains(&refused), "no {refused:?} in the log:\n{log}");
    }
}

// ---- 12d: stale issuer keys ------------------------------------------------

#[test]
fn issuer_keys_older_than_max_stale_keys_get_503_and_a_metric() {
    let mut issuer = TestIssuer::start();
    // Refreshed after 3 s; refused after 6 s without a successful fetch.
    let client = Client::new(Mayfly::start(
        &issuer.issuer_toml("ci", "max_stale_keys = \"6s\""),
        &[("deploy", &role("ci"))],
    ));
    let token = |issuer: &TestIssuer| issuer.sign(Algorithm::ES256, &issuer.claims("bot"));
    client.expect_cert(&client.request("deploy", &token(&issuer)));
    // Every key in use now was fetched before this instant.
    let fetched_before = Instant::now();
    issuer.stop();
    let at = |secs: f64| {
        let when = fetched_before + Duration::from_secs_f64(secs);
        std::thread::sleep(when.saturating_duration_since(Instant::now()));
    };

    // Stale but within max_stale_keys: the refresh fails, the keys in hand
    // serve, with a warning.
    at(3.5);
    client.expect_cert(&client.request("deploy", &token(&issuer)));
    let log = client.ca.stderr_log();
    assert!(
        log.contains("serving the keys in hand until they are older than max_stale_keys"),
        "{log}"
    );

    // Beyond it: 503, saying the keys are too old.
    at(6.5);
    let message = client.expect_error(
        &client.request("deploy", &token(&issuer)),
        503,
        "issuer_keys_too_old",
    );
    assert!(message.contains("too old"), "{message}");
    assert!(message.contains("max_stale_keys of 6 s"), "{message}");
    let metrics = client.metrics();
    let refusals = format!(
        "mayfly_jwks_stale_refusals_total{{issuer=\"{}\"}} 1\n",
        issuer.url
    );
    assert!(metrics.contains(&refusals), "{metrics}");
    let age: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "mayfly_jwks_key_age_seconds{{issuer=\"{}\"}} ",
                issuer.url
            ))
        })
        .expect("key age gauge")
        .parse()
        .expect("a number");
    assert!(age >= 6, "key age {age}");

    // The issuer is back: the next refresh succeeds and tokens mint again.
    issuer.restart();
    at(9.5);
    let minted = support::wait_for(Duration::from_secs(15), Duration::from_millis(250), || {
        let r = client.request("deploy", &token(&issuer));
        (r.status == 200).then_some(r)
    });
    assert!(
        minted.is_some(),
        "no certificate after the issuer came back\n{}",
        client.ca.stderr_log()
    );
}
