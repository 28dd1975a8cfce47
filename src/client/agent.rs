//! A minimal in-process SSH agent, so `mayfly ssh` can hand a key and its
//! certificate to the real `ssh` client without the private key ever being
//! written to disk.
//!
//! It speaks just enough of draft-miller-ssh-agent for `ssh`, `ssh-add -L` and
//! `ssh-keygen -Y sign`: it lists one certificate and signs with its key. It
//! refuses everything that would change its state (add, remove, lock,
//! extensions), so what it holds is exactly what `mayfly` put there.
//!
//! Security notes:
//! - The socket lives in a fresh directory created with mode 0700, and each
//!   connection's peer uid is checked, so only the user running `mayfly` (or
//!   root, who can read our memory anyway) can ask for signatures.
//! - After `expires_at` (or the certificate's own `valid_before`, whichever is
//!   first) the agent lists nothing and signs nothing, so a process that
//!   outlives the certificate cannot keep using the key.
//! - Input is untrusted: every length is checked, messages over 256 KiB are
//!   refused, and a malformed message closes only that connection.

use std::fmt;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use signature::Signer;
use ssh_key::{Algorithm, Certificate, PrivateKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::{JoinHandle, JoinSet};

/// OpenSSH's own agent uses this limit; nothing legitimate comes close.
const MAX_MESSAGE_LEN: usize = 256 * 1024;

const SSH_AGENT_FAILURE: u8 = 5;
const SSH_AGENTC_REQUEST_IDENTITIES: u8 = 11;
const SSH_AGENT_IDENTITIES_ANSWER: u8 = 12;
const SSH_AGENTC_SIGN_REQUEST: u8 = 13;
const SSH_AGENT_SIGN_RESPONSE: u8 = 14;

/// The key and certificate an [`Agent`] serves.
pub struct AgentIdentity {
    /// The certified private key; it zeroizes itself when dropped.
    pub private_key: PrivateKey,
    /// The certificate for `private_key`, offered to `ssh` as the identity.
    pub certificate: Certificate,
}

/// What the agent serves: the newest identity first, then the one it
/// replaced (until that expires), so a client that listed the old
/// certificate just before a swap can still have its signature.
type Ring = Arc<RwLock<Vec<Arc<Served>>>>;

/// A running in-process SSH agent; point `SSH_AUTH_SOCK` at
/// [`Agent::socket_path`]. Dropping it stops the agent and removes the socket.
pub struct Agent {
    socket_path: PathBuf,
    ring: Ring,
    task: JoinHandle<()>,
    // Held only so the directory (and the socket in it) is removed on drop.
    _dir: tempfile::TempDir,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("socket_path", &self.socket_path)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Starts listening on a new unix socket; must be called inside a tokio runtime.
    ///
    /// Serving stops at `expires_at` or the certificate's `valid_before`,
    /// whichever comes first. Fails if the certificate is not for
    /// `private_key`, since `ssh` would then offer a cert the agent cannot
    /// sign for.
    pub fn spawn(identity: AgentIdentity, expires_at: SystemTime) -> io::Result<Agent> {
        // Without a runtime, tokio's bind panics; an error is kinder to the caller.
        tokio::runtime::Handle::try_current()
            .map_err(|_| io::Error::other("mayfly agent must be started inside a tokio runtime"))?;
        let ring: Ring = Arc::new(RwLock::new(vec![Arc::new(Served::new(
            identity, expires_at,
        )?)]));

        // Created with 0700 rather than chmod-ed afterwards, so there is no
        // window in which another user could reach the socket.
        let dir = tempfile::Builder::new()
            .prefix("mayfly-agent-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()?;
        let meta = std::fs::metadata(dir.path())?;
        if meta.mode() & 0o077 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "agent directory {} is accessible to other users",
                    dir.path().display()
                ),
            ));
        }
        let owner_uid = meta.uid();
        let socket_path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket_path)?;
        let task = tokio::spawn(serve(listener, Arc::clone(&ring), owner_uid));
        Ok(Agent {
            socket_path,
            ring,
            task,
            _dir: dir,
        })
    }

    /// The path to give `ssh` as `SSH_AUTH_SOCK` (or `-o IdentityAgent=`).
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Swaps in a renewed identity, atomically for every client: from now
    /// on the agent lists only `identity`. The identity it replaces still
    /// signs until it expires (a client may have listed it a moment ago);
    /// anything older is dropped, and with it its private key.
    pub fn replace(&self, identity: AgentIdentity, expires_at: SystemTime) -> io::Result<()> {
        let fresh = Arc::new(Served::new(identity, expires_at)?);
        let now = SystemTime::now();
        let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
        let previous = ring.first().filter(|s| s.is_live(now)).cloned();
        *ring = std::iter::once(fresh).chain(previous).collect();
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every
        // connection task, which drops the last references to the key.
        self.task.abort();
        // Removed before the directory so no new client can connect in between.
        let _ = std::fs::remove_file(&self.socket_path);
    }
}

/// What connections share: the identity pre-encoded once, plus its deadline.
struct Served {
    private_key: PrivateKey,
    certificate_blob: Vec<u8>,
    public_key_blob: Vec<u8>,
    comment: String,
    expires_at: SystemTime,
}

impl Served {
    fn new(identity: AgentIdentity, expires_at: SystemTime) -> io::Result<Served> {
        let AgentIdentity {
            private_key,
            certificate,
        } = identity;
        if certificate.public_key() != private_key.public_key().key_data() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "certificate is not for the given private key",
            ));
        }
        let certificate_blob = certificate.to_bytes().map_err(io::Error::other)?;
        let public_key_blob = private_key
            .public_key()
            .to_bytes()
            .map_err(io::Error::other)?;
        Ok(Served {
            private_key,
            certificate_blob,
            public_key_blob,
            comment: certificate.key_id().to_owned(),
            expires_at: expires_at.min(certificate.valid_before_time()),
        })
    }

    fn is_live(&self, now: SystemTime) -> bool {
        now < self.expires_at
    }

    fn identities(&self, now: SystemTime) -> Vec<u8> {
        let mut out = vec![SSH_AGENT_IDENTITIES_ANSWER];
        if self.is_live(now) {
            // The plain key is listed too (as `ssh-add` does): ssh pairs an
            // explicit `IdentityFile`/`CertificateFile` with the agent only
            // by the plain key, which `IdentitiesOnly yes` requires.
            put_u32(&mut out, 2);
            put_string(&mut out, &self.certificate_blob);
            put_string(&mut out, self.comment.as_bytes());
            put_string(&mut out, &self.public_key_blob);
            put_string(&mut out, self.comment.as_bytes());
        } else {
            put_u32(&mut out, 0);
        }
        out
    }

    /// `None` means SSH_AGENT_FAILURE.
    fn sign(&self, key_blob: &[u8], data: &[u8], now: SystemTime) -> Option<Vec<u8>> {
        if !self.is_live(now) {
            return None;
        }
        // The certificate and the bare key name the same private key; `ssh`
        // asks with the cert blob, other tools may ask with the plain key.
        if key_blob != self.certificate_blob.as_slice()
            && key_blob != self.public_key_blob.as_slice()
        {
            return None;
        }
        // RSA would need the request flags to pick SHA-256/512 and ssh-key
        // always signs RSA with SHA-512; mayfly generates Ed25519 keys anyway.
        match self.private_key.algorithm() {
            Algorithm::Ed25519 | Algorithm::Ecdsa { .. } => {}
            _ => return None,
        }
        let signature: ssh_key::Signature = self.private_key.try_sign(data).ok()?;
        let encoded = Vec::<u8>::try_from(signature).ok()?;
        let mut out = vec![SSH_AGENT_SIGN_RESPONSE];
        put_string(&mut out, &encoded);
        Some(out)
    }
}

/// Answers one message body from what `ring` serves (newest first); `Err`
/// means the body was malformed and the connection should be closed.
fn respond(ring: &[Arc<Served>], body: &[u8], now: SystemTime) -> Result<Vec<u8>, Malformed> {
    let (&kind, rest) = body.split_first().ok_or(Malformed)?;
    match kind {
        SSH_AGENTC_REQUEST_IDENTITIES => {
            if !rest.is_empty() {
                return Err(Malformed);
            }
            // Only the newest identity is listed.
            Ok(match ring.first() {
                Some(served) => served.identities(now),
                None => vec![SSH_AGENT_IDENTITIES_ANSWER, 0, 0, 0, 0],
            })
        }
        SSH_AGENTC_SIGN_REQUEST => {
            let mut wire = WireReader(rest);
            let key_blob = wire.string()?;
            let data = wire.string()?;
            // Flags only choose the RSA hash, and RSA is not served.
            let _flags = wire.u32()?;
            wire.finish()?;
            Ok(ring
                .iter()
                .find_map(|served| served.sign(key_blob, data, now))
                .unwrap_or_else(|| vec![SSH_AGENT_FAILURE]))
        }
        // Add/remove/lock/extensions and anything unknown: the agent's
        // contents are fixed by mayfly, so every such request fails.
        _ => Ok(vec![SSH_AGENT_FAILURE]),
    }
}

/// The peer sent something that is not a well-formed agent message.
#[derive(Debug)]
struct Malformed;

/// Reads the SSH wire types the agent protocol uses, refusing short input.
struct WireReader<'a>(&'a [u8]);

impl<'a> WireReader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return Err(Malformed);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        let bytes: [u8; 4] = self.take(4)?.try_into().map_err(|_| Malformed)?;
        Ok(u32::from_be_bytes(bytes))
    }

    fn string(&mut self) -> Result<&'a [u8], Malformed> {
        let len = usize::try_from(self.u32()?).map_err(|_| Malformed)?;
        self.take(len)
    }

    /// Trailing bytes mean the peer and we disagree about the format.
    fn finish(&self) -> Result<(), Malformed> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Malformed)
        }
    }
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    // Everything we encode is a key blob, a short comment or a signature, all
    // far below 4 GiB; saturating keeps this total rather than panicking.
    put_u32(out, u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(bytes);
}

async fn serve(listener: UnixListener, ring: Ring, owner_uid: u32) {
    // Owning the connection tasks here means aborting this task ends them all.
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, _)) => {
                if !peer_allowed(&stream, owner_uid) {
                    tracing::warn!("mayfly agent refused a connection from another user");
                    continue;
                }
                connections.spawn(handle_connection(stream, Arc::clone(&ring)));
            }
            Err(error) => {
                // Usually fd exhaustion; back off instead of spinning.
                tracing::warn!(%error, "mayfly agent accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Same rule as OpenSSH's ssh-agent: our own uid, or root.
fn peer_allowed(stream: &UnixStream, owner_uid: u32) -> bool {
    match stream.peer_cred() {
        Ok(cred) => cred.uid() == owner_uid || cred.uid() == 0,
        Err(_) => false,
    }
}

async fn handle_connection(mut stream: UnixStream, ring: Ring) {
    loop {
        let body = match read_message(&mut stream).await {
            Ok(Some(body)) => body,
            Ok(None) => return,
            Err(error) => {
                tracing::debug!(%error, "mayfly agent closed a connection");
                return;
            }
        };
        // A snapshot per message: a swap never tears one answer.
        let current = ring.read().unwrap_or_else(|p| p.into_inner()).clone();
        let reply = match respond(&current, &body, SystemTime::now()) {
            Ok(reply) => reply,
            Err(Malformed) => {
                tracing::debug!("mayfly agent closed a connection after a malformed message");
                return;
            }
        };
        let mut frame = Vec::with_capacity(4 + reply.len());
        put_string(&mut frame, &reply);
        if stream.write_all(&frame).await.is_err() {
            return;
        }
    }
}

/// Reads one length-prefixed message; `Ok(None)` is a clean end of stream.
async fn read_message(stream: &mut UnixStream) -> io::Result<Option<Vec<u8>>> {
    let mut len_bytes = [0u8; 4];
    match stream.read_exact(&mut len_bytes).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::try_from(u32::from_be_bytes(len_bytes)).unwrap_or(usize::MAX);
    if len == 0 || len > MAX_MESSAGE_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("agent message length {len} out of range"),
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;
    use ssh_key::certificate::{Builder, CertType};
    use ssh_key::EcdsaCurve;
    use std::process::Output;

    const KEY_ID: &str = "mayfly-test-job-42";

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs()
    }

    fn identity(algorithm: Algorithm) -> AgentIdentity {
        let ca = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).expect("ca key");
        let private_key = PrivateKey::random(&mut OsRng, algorithm).expect("user key");
        let now = unix_now();
        let mut builder = Builder::new_with_random_nonce(
            &mut OsRng,
            private_key.public_key().key_data().clone(),
            now - 60,
            now + 600,
        )
        .expect("builder");
        builder.serial(42).expect("serial");
        builder.key_id(KEY_ID).expect("key id");
        builder.cert_type(CertType::User).expect("cert type");
        builder.valid_principal("deploy").expect("principal");
        let certificate = builder.sign(&ca).expect("sign cert");
        AgentIdentity {
            private_key,
            certificate,
        }
    }

    fn live() -> SystemTime {
        SystemTime::now() + Duration::from_secs(600)
    }

    async fn run(program: &str, args: &[&str], agent: &Agent, dir: &Path) -> Output {
        tokio::process::Command::new(program)
            .args(args)
            .current_dir(dir)
            .env("SSH_AUTH_SOCK", agent.socket_path())
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("run ssh tool")
    }

    /// Sends raw bytes and reads one framed reply, or `None` if the agent hung up.
    async fn raw_exchange(agent: &Agent, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut stream = UnixStream::connect(agent.socket_path())
            .await
            .expect("connect");
        stream.write_all(bytes).await.expect("write");
        // Half-close so a truncated message reaches EOF instead of waiting forever.
        stream.shutdown().await.expect("shutdown");
        read_message(&mut stream).await.ok().flatten()
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_string(&mut out, body);
        out
    }

    fn cert_line(id: &AgentIdentity) -> String {
        id.certificate.to_openssh().expect("cert line")
    }

    #[tokio::test]
    async fn ssh_add_lists_the_certificate_and_its_key_with_the_key_id() {
        let id = identity(Algorithm::Ed25519);
        let line = cert_line(&id);
        let agent = Agent::spawn(id, live()).expect("spawn");
        let tmp = tempfile::tempdir().expect("tmp");
        let out = run("ssh-add", &["-L"], &agent, tmp.path()).await;
        assert!(out.status.success(), "ssh-add -L failed: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let listed: Vec<&str> = stdout.lines().collect();
        assert_eq!(listed.len(), 2, "{stdout}");
        let mut fields = listed[0].split_whitespace();
        let mut expected = line.split_whitespace();
        assert_eq!(fields.next(), expected.next());
        assert_eq!(fields.next(), expected.next());
        assert_eq!(fields.next(), Some(KEY_ID));
        assert!(listed[1].starts_with("ssh-ed25519 "), "{stdout}");
    }

    async fn ssh_keygen_signature_verifies(algorithm: Algorithm) {
        let id = identity(algorithm);
        let cert = cert_line(&id);
        let agent = Agent::spawn(id, live()).expect("spawn");
        let tmp = tempfile::tempdir().expect("tmp");
        // Only public material goes to disk: that is the point of the agent.
        std::fs::write(tmp.path().join("id-cert.pub"), format!("{cert}\n")).expect("cert file");
        std::fs::write(tmp.path().join("msg"), b"deploy acme/api\n").expect("msg");

        let out = run(
            "ssh-keygen",
            &["-Y", "sign", "-f", "id-cert.pub", "-n", "file", "msg"],
            &agent,
            tmp.path(),
        )
        .await;
        assert!(out.status.success(), "ssh-keygen -Y sign failed: {out:?}");
        assert!(tmp.path().join("msg.sig").exists());

        let check = "ssh-keygen -Y check-novalidate -n file -s msg.sig < msg; echo rc=$?";
        let out = run("sh", &["-c", check], &agent, tmp.path()).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("rc=0"), "check-novalidate failed: {out:?}");
        assert!(stdout.contains("Good"), "{stdout}");
    }

    #[tokio::test]
    async fn ssh_keygen_sign_with_ed25519_cert_verifies() {
        ssh_keygen_signature_verifies(Algorithm::Ed25519).await;
    }

    #[tokio::test]
    async fn ssh_keygen_sign_with_ecdsa_p256_cert_verifies() {
        ssh_keygen_signature_verifies(Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP256,
        })
        .await;
    }

    #[tokio::test]
    async fn ssh_keygen_sign_with_ecdsa_p384_cert_verifies() {
        ssh_keygen_signature_verifies(Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP384,
        })
        .await;
    }

    #[tokio::test]
    async fn plain_public_key_blob_can_be_signed_for() {
        let id = identity(Algorithm::Ed25519);
        let public_key = id.private_key.public_key().clone();
        let blob = public_key.to_bytes().expect("blob");
        let agent = Agent::spawn(id, live()).expect("spawn");

        let mut body = vec![SSH_AGENTC_SIGN_REQUEST];
        put_string(&mut body, &blob);
        put_string(&mut body, b"challenge");
        put_u32(&mut body, 0);
        let reply = raw_exchange(&agent, &frame(&body)).await.expect("reply");
        assert_eq!(reply[0], SSH_AGENT_SIGN_RESPONSE);
        let mut wire = WireReader(&reply[1..]);
        let sig_blob = wire.string().expect("sig");
        wire.finish().expect("no trailing bytes");
        let signature = ssh_key::Signature::try_from(sig_blob).expect("decode sig");
        assert_eq!(signature.algorithm(), Algorithm::Ed25519);
        signature::Verifier::verify(&public_key, b"challenge", &signature).expect("valid");
    }

    /// Asks the agent to sign with `blob`; whether it did.
    async fn signs_for(agent: &Agent, blob: &[u8]) -> bool {
        let mut body = vec![SSH_AGENTC_SIGN_REQUEST];
        put_string(&mut body, blob);
        put_string(&mut body, b"challenge");
        put_u32(&mut body, 0);
        let reply = raw_exchange(agent, &frame(&body)).await.expect("reply");
        reply[0] == SSH_AGENT_SIGN_RESPONSE
    }

    #[tokio::test]
    async fn a_replaced_identity_is_listed_at_once_and_the_old_one_signs_until_the_next_swap() {
        let first = identity(Algorithm::Ed25519);
        let first_blob = first.certificate.to_bytes().expect("blob");
        let agent = Agent::spawn(first, live()).expect("spawn");
        let second = identity(Algorithm::Ed25519);
        let second_line = cert_line(&second);
        let second_blob = second.certificate.to_bytes().expect("blob");
        agent.replace(second, live()).expect("replace");

        let tmp = tempfile::tempdir().expect("tmp");
        let out = run("ssh-add", &["-L"], &agent, tmp.path()).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.lines().count(), 2, "{stdout}");
        let blob_of = |l: &str| l.split_whitespace().nth(1).map(str::to_owned);
        assert!(
            stdout.lines().any(|l| blob_of(l) == blob_of(&second_line)),
            "{stdout}"
        );
        // A client that listed the first certificate just before the swap
        // still gets its signature.
        assert!(signs_for(&agent, &first_blob).await);
        assert!(signs_for(&agent, &second_blob).await);

        // After the next swap the first identity (and its key) is gone.
        agent
            .replace(identity(Algorithm::Ed25519), live())
            .expect("replace");
        assert!(!signs_for(&agent, &first_blob).await);
        assert!(signs_for(&agent, &second_blob).await);
    }

    #[tokio::test]
    async fn signing_for_an_unknown_key_fails() {
        let id = identity(Algorithm::Ed25519);
        let other = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).expect("key");
        let agent = Agent::spawn(id, live()).expect("spawn");
        let mut body = vec![SSH_AGENTC_SIGN_REQUEST];
        put_string(&mut body, &other.public_key().to_bytes().expect("blob"));
        put_string(&mut body, b"challenge");
        put_u32(&mut body, 0);
        let reply = raw_exchange(&agent, &frame(&body)).await;
        assert_eq!(reply, Some(vec![SSH_AGENT_FAILURE]));
    }

    #[tokio::test]
    async fn ssh_add_remove_all_fails_and_agent_keeps_serving() {
        let id = identity(Algorithm::Ed25519);
        let agent = Agent::spawn(id, live()).expect("spawn");
        let tmp = tempfile::tempdir().expect("tmp");
        let out = run("ssh-add", &["-D"], &agent, tmp.path()).await;
        assert!(!out.status.success(), "ssh-add -D should fail: {out:?}");
        let out = run("ssh-add", &["-L"], &agent, tmp.path()).await;
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    }

    #[tokio::test]
    async fn state_changing_and_extension_requests_fail() {
        let agent = Agent::spawn(identity(Algorithm::Ed25519), live()).expect("spawn");
        // add identity, remove, remove all, lock, unlock, extension, unknown
        for kind in [17u8, 18, 19, 22, 23, 27, 200] {
            let mut body = vec![kind];
            put_string(&mut body, b"whatever");
            let reply = raw_exchange(&agent, &frame(&body)).await;
            assert_eq!(reply, Some(vec![SSH_AGENT_FAILURE]), "message {kind}");
        }
    }

    #[tokio::test]
    async fn expired_agent_lists_nothing_and_refuses_to_sign() {
        let id = identity(Algorithm::Ed25519);
        let blob = id.certificate.to_bytes().expect("blob");
        let agent = Agent::spawn(id, SystemTime::now() - Duration::from_secs(1)).expect("spawn");
        let tmp = tempfile::tempdir().expect("tmp");
        let out = run("ssh-add", &["-L"], &agent, tmp.path()).await;
        // ssh-add exits 1 and says "The agent has no identities."
        assert!(!out.status.success(), "{out:?}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("cert-v01"),
            "{out:?}"
        );

        let mut body = vec![SSH_AGENTC_SIGN_REQUEST];
        put_string(&mut body, &blob);
        put_string(&mut body, b"challenge");
        put_u32(&mut body, 0);
        let reply = raw_exchange(&agent, &frame(&body)).await;
        assert_eq!(reply, Some(vec![SSH_AGENT_FAILURE]));
    }

    #[tokio::test]
    async fn garbage_closes_the_connection_but_not_the_agent() {
        let agent = Agent::spawn(identity(Algorithm::Ed25519), live()).expect("spawn");
        let oversized = u32::try_from(MAX_MESSAGE_LEN + 1).expect("fits");
        let mut truncated_sign = vec![SSH_AGENTC_SIGN_REQUEST];
        put_u32(&mut truncated_sign, 1_000_000); // string longer than the message
        let cases: Vec<Vec<u8>> = vec![
            b"\xff\xff\xff\xffGET / HTTP/1.1\r\n\r\n".to_vec(),
            oversized.to_be_bytes().to_vec(),
            frame(&[]),
            frame(&truncated_sign),
            frame(&[SSH_AGENTC_REQUEST_IDENTITIES, 0]),
            vec![0, 0],
        ];
        for garbage in cases {
            let reply = raw_exchange(&agent, &garbage).await;
            assert_eq!(reply, None, "agent answered garbage {garbage:?}");
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let out = run("ssh-add", &["-L"], &agent, tmp.path()).await;
        assert!(out.status.success(), "agent died after garbage: {out:?}");
    }

    #[tokio::test]
    async fn socket_dir_is_private_and_removed_on_drop() {
        let agent = Agent::spawn(identity(Algorithm::Ed25519), live()).expect("spawn");
        let socket = agent.socket_path().to_path_buf();
        let dir = socket.parent().expect("parent").to_path_buf();
        let mode = std::fs::metadata(&dir).expect("dir").mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(agent);
        assert!(!socket.exists());
        assert!(!dir.exists());
    }

    #[tokio::test]
    async fn certificate_for_another_key_is_rejected() {
        let mut id = identity(Algorithm::Ed25519);
        id.private_key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).expect("key");
        let err = Agent::spawn(id, live()).expect_err("mismatch");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn spawn_outside_a_runtime_is_an_error_not_a_panic() {
        let err = Agent::spawn(identity(Algorithm::Ed25519), live()).expect_err("no runtime");
        assert!(err.to_string().contains("tokio runtime"));
    }
}
