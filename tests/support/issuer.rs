//! A small token issuer on a loopback port whose private keys the test
//! holds: it serves OIDC discovery and a JWKS over plain HTTP, signs any
//! header and claims with its ES256 and ES384 keys, and can redirect any
//! path, be stopped (its keys unreachable) and started again on the same
//! port. For attacks that need exact control of the bytes of a token or of
//! the issuer's answers, which the real OIDC provider (`oidc.rs`) does not
//! give.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

/// The audience of the issuer's tokens.
pub const AUDIENCE: &str = "mayfly";

/// What the server answers on one path.
#[derive(Debug, Clone)]
pub enum Route {
    /// 200 with this JSON body.
    Json(Value),
    /// 302 to this absolute URL.
    Redirect(String),
}

/// One signing key of the issuer.
struct SigningKey {
    alg: Algorithm,
    kid: String,
    pkcs8: Vec<u8>,
    jwk: Value,
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Route>,
    hits: HashMap<String, usize>,
}

/// A running issuer; stopped on drop.
pub struct TestIssuer {
    /// `http://127.0.0.1:PORT`, exactly the `iss` of its tokens.
    pub url: String,
    port: u16,
    keys: Vec<SigningKey>,
    state: Arc<Mutex<State>>,
    server: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn ec_key(alg: Algorithm, kid: &str) -> SigningKey {
    let (signing, crv, half) = match alg {
        Algorithm::ES256 => (&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32),
        Algorithm::ES384 => (&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48),
        other => panic!("the test issuer has no {other:?} keys"),
    };
    let pair = EcdsaKeyPair::generate(signing).expect("generate an EC key");
    let pkcs8 = pair.to_pkcs8v1().expect("PKCS#8 of the EC key");
    // Uncompressed point: 0x04 || x || y.
    let point = pair.public_key().as_ref().to_vec();
    assert_eq!(point.len(), 1 + 2 * half, "uncompressed {crv} point");
    let jwk = json!({
        "kty": "EC", "crv": crv, "use": "sig", "alg": format!("{alg:?}"), "kid": kid,
        "x": b64(&point[1..1 + half]), "y": b64(&point[1 + half..]),
    });
    SigningKey {
        alg,
        kid: kid.to_string(),
        pkcs8: pkcs8.as_ref().to_vec(),
        jwk,
    }
}

impl TestIssuer {
    /// Starts an issuer with fresh ES256 and ES384 keys, serving
    /// `/.well-known/openid-configuration` (pointing at `/jwks`) and `/jwks`.
    pub fn start() -> TestIssuer {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the test issuer's port");
        let port = listener.local_addr().expect("issuer address").port();
        let url = format!("http://127.0.0.1:{port}");
        let keys = vec![
            ec_key(Algorithm::ES256, "es256-1"),
            ec_key(Algorithm::ES384, "es384-1"),
        ];
        let mut state = State::default();
        state.routes.insert(
            "/.well-known/openid-configuration".into(),
            Route::Json(json!({"issuer": url, "jwks_uri": format!("{url}/jwks")})),
        );
        state.routes.insert(
            "/jwks".into(),
            Route::Json(json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})),
        );
        let mut issuer = TestIssuer {
            url,
            port,
            keys,
            state: Arc::new(Mutex::new(state)),
            server: None,
        };
        issuer.serve(listener);
        issuer
    }

    fn serve(&mut self, listener: TcpListener) {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, state) = (stop.clone(), self.state.clone());
        let handle = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = conn {
                    answer(stream, &state);
                }
            }
        });
        self.server = Some((stop, handle));
    }

    /// Closes the port: fetches of discovery and JWKS fail (connection refused).
    pub fn stop(&mut self) {
        if let Some((stop, handle)) = self.server.take() {
            stop.store(true, Ordering::SeqCst);
            // Wake the accept loop so that it sees the flag and drops the listener.
            let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
            handle.join().expect("issuer thread ends");
        }
    }

    /// Serves again on the same port, with the same keys and routes.
    pub fn restart(&mut self) {
        self.stop();
        let listener = (0..50)
            .find_map(|_| {
                TcpListener::bind((Ipv4Addr::LOCALHOST, self.port))
                    .map_err(|_| std::thread::sleep(Duration::from_millis(100)))
                    .ok()
            })
            .unwrap_or_else(|| panic!("rebind the test issuer on port {}", self.port));
        self.serve(listener);
    }

    /// Sets what `path` answers.
    pub fn route(&self, path: &str, route: Route) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.routes.insert(path.to_string(), route);
    }

    /// What `path` answers now.
    pub fn route_of(&self, path: &str) -> Option<Route> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.routes.get(path).cloned()
    }

    /// How many requests `path` got.
    pub fn hits(&self, path: &str) -> usize {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.hits.get(path).copied().unwrap_or(0)
    }

    /// A `[[issuer]]` block naming this issuer, followed by `extra` lines.
    pub fn issuer_toml(&self, name: &str, extra: &str) -> String {
        format!(
            "\n[[issuer]]\nname = \"{name}\"\nurl = \"{}\"\naudience = \"{AUDIENCE}\"\n{extra}\n",
            self.url
        )
    }

    /// Claims of a valid token for `sub`, valid for five minutes from now,
    /// with a fresh `jti`.
    pub fn claims(&self, sub: &str) -> Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        json!({
            "iss": self.url, "aud": AUDIENCE, "sub": sub,
            "iat": now, "exp": now + 300,
            "jti": uuid::Uuid::new_v4().to_string(),
        })
    }

    /// A JWT with `claims` signed by the issuer's `alg` key, with its kid.
    pub fn sign(&self, alg: Algorithm, claims: &Value) -> String {
        let key = self.key(alg);
        self.sign_with_header(
            alg,
            &json!({"alg": format!("{alg:?}"), "typ": "JWT", "kid": key.kid}),
            claims,
        )
    }

    /// A JWS over exactly this protected header and these claims, signed by
    /// the issuer's `alg` key, whatever the header says.
    pub fn sign_with_header(&self, alg: Algorithm, header: &Value, claims: &Value) -> String {
        let key = self.key(alg);
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &EncodingKey::from_ec_der(&key.pkcs8),
            alg,
        )
        .unwrap_or_else(|e| panic!("sign with the {alg:?} key: {e}"));
        format!("{input}.{sig}")
    }

    /// The public JWK of the `alg` key.
    pub fn jwk(&self, alg: Algorithm) -> &Value {
        &self.key(alg).jwk
    }

    fn key(&self, alg: Algorithm) -> &SigningKey {
        self.keys
            .iter()
            .find(|k| k.alg == alg)
            .unwrap_or_else(|| panic!("the test issuer has no {alg:?} key"))
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Answers one request (GET, any path) and closes the connection.
fn answer(stream: TcpStream, state: &Mutex<State>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Skip the headers.
    let mut line = String::new();
    while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
        line.clear();
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let route = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        *st.hits.entry(path.clone()).or_default() += 1;
        st.routes.get(&path).cloned()
    };
    let response = match route {
        Some(Route::Json(v)) => {
            let body = v.to_string();
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        }
        Some(Route::Redirect(to)) => format!(
            "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
    };
    let mut stream = stream;
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}
