//! CA keys inside a PKCS#11 token (an HSM, or SoftHSM for tests): the
//! private key never leaves the token; mayfly finds it by label, reads the
//! public key from the token, and asks the token for each signature.
//!
//! Supported keys and mechanisms:
//!
//! | key | mechanism | SSH signature |
//! |---|---|---|
//! | Ed25519 (`CKK_EC_EDWARDS`) | `CKM_EDDSA` | `ssh-ed25519` |
//! | ECDSA P-256 / P-384 (`CKK_EC`) | `CKM_ECDSA` over SHA-256 / SHA-384 of the message | `ecdsa-sha2-nistp256` / `-nistp384` |
//! | RSA ≥ 2048 bits (`CKK_RSA`) | `CKM_SHA512_RSA_PKCS` | `rsa-sha2-512` (never SHA-1 `ssh-rsa`) |
//!
//! A PKCS#11 module may be initialized only once per process, so modules
//! are loaded once and shared ([`shared_context`]). Login state belongs to
//! the application, not the session: the signer keeps a small pool of
//! sessions (at least one stays open, so the token stays logged in) and
//! opens another when all are busy, so concurrent `sign` calls do not wait
//! on one another. Errors name the module, token and key label; never the PIN.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use rand_core::{OsRng, RngCore};
use sha2::Digest;
use ssh_key::public::{EcdsaPublicKey, Ed25519PublicKey, KeyData, RsaPublicKey};
use ssh_key::{Algorithm, EcdsaCurve, HashAlg, Mpint};

use super::keys::Secret;
use super::signer::{CaSigner, SignError};
use crate::config::{CaKeyType, Pkcs11Config};

/// Idle sessions kept open per key; more are opened while signatures overlap.
const MAX_IDLE_SESSIONS: usize = 8;

/// Smallest RSA CA key accepted.
const MIN_RSA_BITS: usize = 2048;

/// DER of the Ed25519 curve OID 1.3.101.112 (RFC 8410), as `CKA_EC_PARAMS`.
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER PrintableString "edwards25519", the older `CKA_EC_PARAMS` form.
const NAME_ED25519: &[u8] = b"\x13\x0cedwards25519";
/// DER of the P-256 curve OID 1.2.840.10045.3.1.7.
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of the P-384 curve OID 1.3.132.0.34.
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// Message signed once at start-up and verified against the token's public key.
const SELF_TEST_MESSAGE: &[u8] =
    b"mayfly pkcs11 self-test: does this key sign what its public key verifies?";

/// Why a PKCS#11 key could not be used. Every variant names what failed
/// (module, token, label); none carries the PIN.
#[derive(Debug, thiserror::Error)]
pub enum Pkcs11Error {
    /// The module could not be loaded or initialized.
    #[error("PKCS#11 module {module}: {reason}")]
    Module {
        /// The module path.
        module: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// No token (or more than one) has the configured label.
    #[error("PKCS#11 module {module}: {reason} (tokens found: {found})")]
    Token {
        /// The module path.
        module: PathBuf,
        /// What is wrong with the token label.
        reason: String,
        /// Labels of the tokens the module shows, for the operator.
        found: String,
    },
    /// Logging in failed (wrong or locked PIN).
    #[error("PKCS#11 token {token:?} (module {module}): login with the PIN from {pin_source} failed: {reason}")]
    Login {
        /// The module path.
        module: PathBuf,
        /// The token label.
        token: String,
        /// Where the PIN came from (never the PIN).
        pin_source: String,
        /// The token's answer.
        reason: String,
    },
    /// The key is missing, ambiguous or of a kind mayfly cannot use.
    #[error("PKCS#11 token {token:?} (module {module}), key {label:?}: {reason}")]
    Key {
        /// The module path.
        module: PathBuf,
        /// The token label.
        token: String,
        /// The key label.
        label: String,
        /// What is wrong.
        reason: String,
    },
    /// A token operation failed.
    #[error("PKCS#11 token {token:?} (module {module}): {operation} failed: {source}")]
    Operation {
        /// The module path.
        module: PathBuf,
        /// The token label.
        token: String,
        /// What was being done.
        operation: String,
        /// The module's error.
        source: CkError,
    },
}

/// The module's PKCS#11 context, loaded and initialized once per process
/// and shared by every signer (and by tests that provision keys).
pub fn shared_context(module: &Path) -> Result<Pkcs11, Pkcs11Error> {
    static CONTEXTS: Mutex<Vec<(PathBuf, Pkcs11)>> = Mutex::new(Vec::new());
    let err = |reason: String| Pkcs11Error::Module {
        module: module.to_path_buf(),
        reason,
    };
    let key = std::fs::canonicalize(module).map_err(|e| err(e.to_string()))?;
    let mut contexts = CONTEXTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, ctx)) = contexts.iter().find(|(p, _)| *p == key) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(&key).map_err(|e| err(format!("cannot load: {e}")))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Initialized by someone else in this process: the context is usable.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(err(format!("C_Initialize failed: {e}"))),
    }
    contexts.push((key, ctx.clone()));
    Ok(ctx)
}

/// The kind of key in the token, which fixes mechanism and SSH algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ed25519,
    EcdsaP256,
    EcdsaP384,
    Rsa,
}

impl Kind {
    fn of(key_type: CaKeyType) -> Kind {
        match key_type {
            CaKeyType::Ed25519 => Kind::Ed25519,
            CaKeyType::EcdsaP256 => Kind::EcdsaP256,
            CaKeyType::EcdsaP384 => Kind::EcdsaP384,
            CaKeyType::Rsa3072 | CaKeyType::Rsa4096 => Kind::Rsa,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Ed25519 => "ed25519",
            Kind::EcdsaP256 => "ecdsa-p256",
            Kind::EcdsaP384 => "ecdsa-p384",
            Kind::Rsa => "rsa",
        }
    }

    fn mechanism_type(self) -> MechanismType {
        match self {
            Kind::Ed25519 => MechanismType::EDDSA,
            Kind::EcdsaP256 | Kind::EcdsaP384 => MechanismType::ECDSA,
            Kind::Rsa => MechanismType::SHA512_RSA_PKCS,
        }
    }

    fn mechanism_name(self) -> &'static str {
        match self {
            Kind::Ed25519 => "CKM_EDDSA",
            Kind::EcdsaP256 | Kind::EcdsaP384 => "CKM_ECDSA",
            Kind::Rsa => "CKM_SHA512_RSA_PKCS",
        }
    }
}

/// A CA key in a PKCS#11 token. `Send + Sync`: concurrent `sign` calls each
/// take a session from a pool (opening one if none is idle).
pub struct Pkcs11Signer {
    ctx: Pkcs11,
    slot: Slot,
    key: ObjectHandle,
    kind: Kind,
    public: KeyData,
    pin: AuthPin,
    pin_source: String,
    module: PathBuf,
    token: String,
    label: String,
    idle: Mutex<Vec<Session>>,
}

impl fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pkcs11Signer({}, PIN [redacted])", self.describe())
    }
}

impl Pkcs11Signer {
    /// Opens the key pair labelled `label` in the configured token, logging
    /// in with `pin`; creates it (as `cfg.key_type`) if it is missing and
    /// `generate_if_missing` is set. Signs and verifies one test message
    /// before returning. Returns the signer and whether the key was created.
    pub fn open(
        cfg: &Pkcs11Config,
        label: &str,
        pin: &Secret,
    ) -> Result<(Pkcs11Signer, bool), Pkcs11Error> {
        let module = cfg.module.clone();
        let token = cfg.token_label.clone();
        let ctx = shared_context(&module)?;
        let slot = find_token(&ctx, &module, &token)?;
        let op = |operation: &str| {
            let (module, token, operation) = (module.clone(), token.clone(), operation.to_string());
            move |source| Pkcs11Error::Operation {
                module,
                token,
                operation,
                source,
            }
        };
        let key_err = |reason: String| Pkcs11Error::Key {
            module: module.clone(),
            token: token.clone(),
            label: label.to_string(),
            reason,
        };
        let auth = AuthPin::from(pin.expose());
        // This session stays open for the signer's lifetime (in the pool):
        // closing an application's last session logs it out.
        let session = ctx.open_ro_session(slot).map_err(op("C_OpenSession"))?;
        login(&session, &auth).map_err(|e| Pkcs11Error::Login {
            module: module.clone(),
            token: token.clone(),
            pin_source: pin.source().to_string(),
            reason: match e {
                CkError::Pkcs11(RvError::PinIncorrect, _) => "wrong PIN".into(),
                CkError::Pkcs11(RvError::PinLocked, _) => {
                    "the user PIN is locked (too many wrong PINs); unlock it with the SO PIN".into()
                }
                CkError::Pkcs11(RvError::PinExpired, _) => "the PIN has expired".into(),
                other => other.to_string(),
            },
        })?;

        let mechanisms = ctx
            .get_mechanism_list(slot)
            .map_err(op("C_GetMechanismList"))?;
        let mut created = false;
        let private = match find_one(&session, ObjectClass::PRIVATE_KEY, label)
            .map_err(op("C_FindObjects"))?
        {
            Found::One(h) => h,
            Found::Many(n) => {
                return Err(key_err(format!(
                    "{n} private keys have this label; give the CA key a unique label"
                )))
            }
            Found::None if cfg.generate_if_missing => {
                let kind = Kind::of(cfg.key_type);
                if !mechanisms.contains(&kind.mechanism_type()) {
                    return Err(key_err(format!(
                        "cannot generate a {} key: the token does not offer {}; choose \
                             another [ca] key_type",
                        cfg.key_type.as_str(),
                        kind.mechanism_name()
                    )));
                }
                let rw = ctx
                    .open_rw_session(slot)
                    .map_err(op("C_OpenSession (read-write)"))?;
                let h = generate(&rw, cfg.key_type, label).map_err(|e| {
                    key_err(format!(
                        "generating a {} key pair failed: {e}",
                        cfg.key_type.as_str()
                    ))
                })?;
                created = true;
                h
            }
            Found::None => {
                return Err(key_err(format!(
                    "no private key with this label in the token; create one (e.g. \
                         `pkcs11-tool --module {} --token-label {token} --login --keypairgen \
                         --key-type EC:prime256v1 --label {label}`) or set [ca] \
                         generate_if_missing = true",
                    module.display()
                )))
            }
        };
        let (kind, public) = read_public(&session, private, label).map_err(&key_err)?;
        if !mechanisms.contains(&kind.mechanism_type()) {
            return Err(key_err(format!(
                "the key is {} but the token does not offer {}",
                kind.name(),
                kind.mechanism_name()
            )));
        }
        let signer = Pkcs11Signer {
            ctx,
            slot,
            key: private,
            kind,
            public,
            pin: auth,
            pin_source: pin.source().to_string(),
            module: module.clone(),
            token: token.clone(),
            label: label.to_string(),
            idle: Mutex::new(vec![session]),
        };
        let sig = signer
            .sign(SELF_TEST_MESSAGE)
            .map_err(|e| key_err(format!("self-test signature failed: {e}")))?;
        signature::Verifier::verify(&signer.public, SELF_TEST_MESSAGE, &sig).map_err(|_| {
            key_err(
                "self-test signature does not verify with the public key found under this \
                 label; the public and private key objects do not belong together"
                    .into(),
            )
        })?;
        Ok((signer, created))
    }

    /// The token label.
    pub fn token_label(&self) -> &str {
        &self.token
    }

    /// The key label.
    pub fn key_label(&self) -> &str {
        &self.label
    }

    /// Idle sessions in the pool right now (for tests and measurements).
    pub fn idle_sessions(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn take_session(&self) -> Result<Session, CkError> {
        if let Some(s) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(s);
        }
        // Login state is shared by all of the application's sessions, so a
        // new session is already logged in while the pooled one is open.
        let s = self.ctx.open_ro_session(self.slot)?;
        login(&s, &self.pin)?;
        Ok(s)
    }

    fn put_session(&self, s: Session) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_SESSIONS {
            idle.push(s);
        }
        // Otherwise `s` is closed here, while the idle ones stay open.
    }

    fn sign_raw(&self, msg: &[u8]) -> Result<Vec<u8>, CkError> {
        let session = self.take_session()?;
        let out = match self.kind {
            Kind::Ed25519 => session.sign(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                self.key,
                msg,
            ),
            Kind::EcdsaP256 => {
                session.sign(&Mechanism::Ecdsa, self.key, &sha2::Sha256::digest(msg))
            }
            Kind::EcdsaP384 => {
                session.sign(&Mechanism::Ecdsa, self.key, &sha2::Sha384::digest(msg))
            }
            Kind::Rsa => session.sign(&Mechanism::Sha512RsaPkcs, self.key, msg),
        };
        // A session that failed may be broken (token reset): let it close.
        if out.is_ok() {
            self.put_session(session);
        }
        out
    }

    fn to_ssh(&self, raw: Vec<u8>) -> Result<ssh_key::Signature, String> {
        match self.kind {
            Kind::Ed25519 => ssh_key::Signature::new(Algorithm::Ed25519, raw)
                .map_err(|e| format!("token returned a bad Ed25519 signature: {e}")),
            Kind::EcdsaP256 => ecdsa_signature(EcdsaCurve::NistP256, 32, &raw),
            Kind::EcdsaP384 => ecdsa_signature(EcdsaCurve::NistP384, 48, &raw),
            Kind::Rsa => ssh_key::Signature::new(
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha512),
                },
                raw,
            )
            .map_err(|e| format!("token returned a bad RSA signature: {e}")),
        }
    }
}

impl CaSigner for Pkcs11Signer {
    fn public_key(&self) -> &KeyData {
        &self.public
    }

    fn sign(&self, msg: &[u8]) -> Result<ssh_key::Signature, SignError> {
        let raw = match self.sign_raw(msg) {
            Ok(raw) => raw,
            // One retry on a fresh session: the token may have been reset,
            // which invalidates sessions and login.
            Err(first) if retryable(&first) => {
                self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
                self.sign_raw(msg).map_err(|e| self.sign_error(&e))?
            }
            Err(e) => return Err(self.sign_error(&e)),
        };
        self.to_ssh(raw)
            .map_err(|e| SignError(format!("{}: {e}", self.describe())))
    }

    fn describe(&self) -> String {
        format!(
            "PKCS#11 token {:?} key {:?} ({}, module {})",
            self.token,
            self.label,
            self.kind.name(),
            self.module.display()
        )
    }
}

impl Pkcs11Signer {
    fn sign_error(&self, e: &CkError) -> SignError {
        let hint = match e {
            CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLocked, _) => {
                format!(" (re-login with the PIN from {} failed)", self.pin_source)
            }
            _ => String::new(),
        };
        SignError(format!("{}: {e}{hint}", self.describe()))
    }
}

fn retryable(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent,
            _
        )
    )
}

fn login(session: &Session, pin: &AuthPin) -> Result<(), CkError> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(e),
    }
}

fn find_token(ctx: &Pkcs11, module: &Path, token: &str) -> Result<Slot, Pkcs11Error> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| Pkcs11Error::Module {
            module: module.to_path_buf(),
            reason: format!("C_GetSlotList failed: {e}"),
        })?;
    let mut found = Vec::new();
    let mut matching = Vec::new();
    for slot in slots {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        // SoftHSM and others always show one blank token to initialize.
        if !info.token_initialized() {
            continue;
        }
        let l = info.label().trim_end().to_string();
        if l == token {
            matching.push(slot);
        }
        found.push(format!("{l:?}"));
    }
    let found = if found.is_empty() {
        "none".to_string()
    } else {
        found.join(", ")
    };
    match matching.as_slice() {
        [slot] => Ok(*slot),
        [] => Err(Pkcs11Error::Token {
            module: module.to_path_buf(),
            reason: format!("no token labelled {token:?}"),
            found,
        }),
        more => Err(Pkcs11Error::Token {
            module: module.to_path_buf(),
            reason: format!(
                "{} tokens are labelled {token:?}; labels must be unique",
                more.len()
            ),
            found,
        }),
    }
}

enum Found {
    None,
    One(ObjectHandle),
    Many(usize),
}

fn find_one(session: &Session, class: ObjectClass, label: &str) -> Result<Found, CkError> {
    let handles = session.find_objects(&[
        Attribute::Class(class),
        Attribute::Label(label.as_bytes().to_vec()),
    ])?;
    Ok(match handles.as_slice() {
        [] => Found::None,
        [h] => Found::One(*h),
        more => Found::Many(more.len()),
    })
}

/// One attribute's bytes, or `None` if the token does not have it.
fn attribute(
    session: &Session,
    object: ObjectHandle,
    which: AttributeType,
) -> Result<Option<Attribute>, String> {
    let attrs = session
        .get_attributes(object, &[which])
        .map_err(|e| format!("reading {which:?} failed: {e}"))?;
    Ok(attrs.into_iter().next())
}

fn bytes_attr(
    session: &Session,
    object: ObjectHandle,
    which: AttributeType,
) -> Result<Option<Vec<u8>>, String> {
    Ok(match attribute(session, object, which)? {
        Some(Attribute::EcParams(v))
        | Some(Attribute::EcPoint(v))
        | Some(Attribute::Modulus(v))
        | Some(Attribute::PublicExponent(v)) => Some(v),
        _ => None,
    })
}

/// The key's kind and public key: from the public key object with the same
/// label if there is one, else from the private key's public attributes.
fn read_public(
    session: &Session,
    private: ObjectHandle,
    label: &str,
) -> Result<(Kind, KeyData), String> {
    let key_type = match attribute(session, private, AttributeType::KeyType)? {
        Some(Attribute::KeyType(t)) => t,
        _ => return Err("the private key has no CKA_KEY_TYPE".into()),
    };
    let public = match find_one(session, ObjectClass::PUBLIC_KEY, label)
        .map_err(|e| format!("looking for the public key failed: {e}"))?
    {
        Found::One(h) => h,
        Found::None => private,
        Found::Many(n) => {
            return Err(format!(
                "{n} public keys have this label; give the CA key a unique label"
            ))
        }
    };
    let need = |which: AttributeType| -> Result<Vec<u8>, String> {
        if let Some(v) = bytes_attr(session, public, which)? {
            return Ok(v);
        }
        // Some tokens keep public attributes on the private key too (RSA
        // modulus and exponent always); a refusal there is not an error.
        if public != private {
            if let Ok(Some(v)) = bytes_attr(session, private, which) {
                return Ok(v);
            }
        }
        Err(format!(
            "the token shows no {which:?} for this key (is there no public key object with \
             this label?)"
        ))
    };
    if key_type == KeyType::EC_EDWARDS {
        let params = need(AttributeType::EcParams)?;
        if params != OID_ED25519 && params != NAME_ED25519 {
            return Err("the key is an Edwards curve other than Ed25519 (Ed448?)".into());
        }
        let point = ec_point(&need(AttributeType::EcPoint)?, 32)?;
        let bytes: [u8; 32] = point
            .try_into()
            .map_err(|_| "Ed25519 public key is not 32 bytes".to_string())?;
        Ok((Kind::Ed25519, KeyData::Ed25519(Ed25519PublicKey(bytes))))
    } else if key_type == KeyType::EC {
        let params = need(AttributeType::EcParams)?;
        let (kind, len) = if params == OID_P256 {
            (Kind::EcdsaP256, 65)
        } else if params == OID_P384 {
            (Kind::EcdsaP384, 97)
        } else {
            return Err("the EC key is on a curve other than P-256 or P-384".into());
        };
        let point = ec_point(&need(AttributeType::EcPoint)?, len)?;
        let pk = EcdsaPublicKey::from_sec1_bytes(&point)
            .map_err(|e| format!("the token's EC point is not valid: {e}"))?;
        Ok((kind, KeyData::Ecdsa(pk)))
    } else if key_type == KeyType::RSA {
        let n = need(AttributeType::Modulus)?;
        let e = need(AttributeType::PublicExponent)?;
        let n = Mpint::from_positive_bytes(&n).map_err(|e| format!("bad RSA modulus: {e}"))?;
        let e = Mpint::from_positive_bytes(&e).map_err(|e| format!("bad RSA exponent: {e}"))?;
        let bits = n.as_positive_bytes().map(|b| b.len() * 8).unwrap_or(0);
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "the RSA key has about {bits} bits; a CA key needs at least {MIN_RSA_BITS}"
            ));
        }
        Ok((Kind::Rsa, KeyData::Rsa(RsaPublicKey { e, n })))
    } else {
        Err(format!(
            "the key type {key_type} is not supported; use Ed25519, ECDSA P-256/P-384 or RSA"
        ))
    }
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the point in the standard,
/// but some tokens return the bare point: accept both, by the expected length.
fn ec_point(v: &[u8], len: usize) -> Result<Vec<u8>, String> {
    if v.len() == len {
        return Ok(v.to_vec());
    }
    // Short or one-byte long DER length; the OCTET STRING must fill `v`.
    let inner = match v {
        [0x04, n, rest @ ..] if *n < 0x80 => Some((usize::from(*n), rest)),
        [0x04, 0x81, n, rest @ ..] => Some((usize::from(*n), rest)),
        _ => None,
    };
    match inner {
        Some((n, rest)) if n == len && rest.len() == len => Ok(rest.to_vec()),
        _ => Err(format!(
            "CKA_EC_POINT is {} bytes, neither a {len}-byte point nor one wrapped in DER",
            v.len()
        )),
    }
}

/// Raw `r || s` from `CKM_ECDSA` to SSH's `mpint r, mpint s` encoding.
fn ecdsa_signature(
    curve: EcdsaCurve,
    size: usize,
    raw: &[u8],
) -> Result<ssh_key::Signature, String> {
    if raw.len() != 2 * size {
        return Err(format!(
            "token returned a {}-byte ECDSA signature, expected {}",
            raw.len(),
            2 * size
        ));
    }
    let (r, s) = raw.split_at(size);
    let mut data = Vec::with_capacity(2 * size + 10);
    for half in [r, s] {
        let m = Mpint::from_positive_bytes(half).map_err(|e| format!("bad ECDSA scalar: {e}"))?;
        let body = m.as_bytes();
        let len = u32::try_from(body.len()).map_err(|e| e.to_string())?;
        data.extend_from_slice(&len.to_be_bytes());
        data.extend_from_slice(body);
    }
    ssh_key::Signature::new(Algorithm::Ecdsa { curve }, data)
        .map_err(|e| format!("token returned a bad ECDSA signature: {e}"))
}

/// Creates a key pair labelled `label`: the private half sensitive, not
/// extractable, sign-only, on the token.
fn generate(session: &Session, key_type: CaKeyType, label: &str) -> Result<ObjectHandle, CkError> {
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    let common = |mut v: Vec<Attribute>| {
        v.push(Attribute::Token(true));
        v.push(Attribute::Label(label.as_bytes().to_vec()));
        v.push(Attribute::Id(id.to_vec()));
        v
    };
    let private = common(vec![
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
    ]);
    let (mechanism, public) = match key_type {
        CaKeyType::Ed25519 => (
            Mechanism::EccEdwardsKeyPairGen,
            common(vec![
                Attribute::Verify(true),
                Attribute::EcParams(OID_ED25519.to_vec()),
            ]),
        ),
        CaKeyType::EcdsaP256 | CaKeyType::EcdsaP384 => (
            Mechanism::EccKeyPairGen,
            common(vec![
                Attribute::Verify(true),
                Attribute::EcParams(if key_type == CaKeyType::EcdsaP256 {
                    OID_P256.to_vec()
                } else {
                    OID_P384.to_vec()
                }),
            ]),
        ),
        CaKeyType::Rsa3072 | CaKeyType::Rsa4096 => (
            Mechanism::RsaPkcsKeyPairGen,
            common(vec![
                Attribute::Verify(true),
                Attribute::ModulusBits(
                    if key_type == CaKeyType::Rsa3072 {
                        3072
                    } else {
                        4096
                    }
                    .into(),
                ),
                Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
            ]),
        ),
    };
    let (_pub, private) = session.generate_key_pair(&mechanism, &public, &private)?;
    Ok(private)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_point_accepts_bare_and_der_wrapped_points() {
        let point = {
            let mut p = vec![0x04];
            p.extend([0x11; 64]);
            p
        };
        assert_eq!(ec_point(&point, 65).expect("test step"), point);
        let mut der = vec![0x04, 65];
        der.extend(&point);
        assert_eq!(ec_point(&der, 65).expect("test step"), point);
        let mut der384 = vec![0x04, 0x61, 0x04];
        der384.extend([0x22; 96]);
        assert_eq!(ec_point(&der384, 97).expect("test step").len(), 97);
        assert!(ec_point(&der[..40], 65).is_err());
        let ed = [&[0x04, 0x20][..], &[7u8; 32]].concat();
        assert_eq!(ec_point(&ed, 32).expect("test step"), vec![7u8; 32]);
    }

    #[test]
    fn raw_ecdsa_signature_becomes_ssh_mpints() {
        // r with a high bit (needs a 0x00 pad), s with leading zeros (stripped).
        let mut raw = vec![0x80; 32];
        raw.extend([0u8; 31]);
        raw.push(5);
        let sig = ecdsa_signature(EcdsaCurve::NistP256, 32, &raw).expect("test step");
        let d = sig.as_bytes();
        assert_eq!(&d[..4], &[0, 0, 0, 33]);
        assert_eq!(d[4], 0);
        assert_eq!(&d[37..], &[0, 0, 0, 1, 5]);
        assert!(ecdsa_signature(EcdsaCurve::NistP256, 32, &raw[..63]).is_err());
    }
}
