#!/usr/bin/env python3
"""Regenerates the seed corpus in fuzz/corpus/ from real inputs.

Run from the repository root: python3 fuzz/seeds/make_seeds.py
Needs ssh-keygen. Inputs: the ca-policy/*.toml roles, keys and KRLs made by
ssh-keygen, tokens in the shapes the test suite's OIDC provider issues, and
audit export lines hashed with the documented version-1 chain encoding.
"""
import base64, hashlib, json, os, shutil, struct, subprocess, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def sh(*args, cwd=None, input=None):
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, input=input).stdout


# ---- jwt_front: 'R' + raw token, or 'S' + header 0xff payload 0xff sig ----
def jwt_seeds():
    now = 1750000000
    shapes = {
        "github": ({"alg": "RS256", "kid": "gh-1", "typ": "JWT"},
                   {"iss": "https://token.actions.githubusercontent.com", "aud": "mayfly",
                    "sub": "repo:acme/api:ref:refs/heads/main", "repository": "acme/api",
                    "ref": "refs/heads/main", "event_name": "push", "jti": "8f1c",
                    "iat": now, "nbf": now, "exp": now + 300}),
        "gitlab": ({"alg": "ES256", "kid": "gl", "typ": "JWT"},
                   {"iss": "https://gitlab.example.com", "aud": ["mayfly", "other"],
                    "sub": "project_path:acme/release:ref_type:tag:ref:v1.2.3",
                    "namespace_path": "acme", "ref_protected": "true", "iat": now, "exp": now + 300}),
        "k8s": ({"alg": "EdDSA", "kid": "k8s-2024"},
                {"iss": "https://kubernetes.default.svc", "aud": "mayfly",
                 "sub": "system:serviceaccount:backup:restic", "exp": now + 600,
                 "kubernetes.io": {"namespace": "backup", "serviceaccount": {"name": "restic"}}}),
        "oidc-test": ({"alg": "PS384", "kid": "test-key"},
                      {"iss": "http://127.0.0.1:3000", "aud": "mayfly", "sub": "bot-1",
                       "exp": 1.75e9, "iat": now, "jti": "t-1"}),
        "hs256": ({"alg": "HS256", "typ": "JWT"}, {"iss": "x", "sub": "y"}),
        "none": ({"alg": "none"}, {"iss": "x", "sub": "y"}),
        "crit": ({"alg": "ES384", "kid": "k", "crit": ["exp"], "exp": 1}, {"iss": "https://i"}),
    }
    for name, (h, p) in shapes.items():
        hj = json.dumps(h, separators=(",", ":")).encode()
        pj = json.dumps(p, separators=(",", ":")).encode()
        sig = hashlib.sha512(hj + pj).digest()
        put("jwt_front", "raw-" + name, "R" + b64u(hj) + "." + b64u(pj) + "." + b64u(sig))
        put("jwt_front", "parts-" + name, b"S" + hj + b"\xff" + pj + b"\xff" + sig[:64])
    put("jwt_front", "raw-two-parts", "R" + b64u(b'{"alg":"RS256"}') + "." + b64u(b"{}"))


# ---- policy_role: the shipped roles and a few more shapes ----
def policy_seeds():
    pol = os.path.join(ROOT, "ca-policy")
    for f in sorted(os.listdir(pol)):
        if f.endswith(".toml") and f != "cases.toml":
            put("policy_role", f[:-5], open(os.path.join(pol, f), "rb").read())
    put("policy_role", "host", """description = "Host certificates for the web fleet"
owner = "sre@example.com"
issuer = "k8s"
cert_type = "host"
hostnames = ["web-*.example.com", "{node}.nodes.example.com"]
max_ttl = "30d"
[claims]
sub = "system:serviceaccount:kube-system:host-agent"
""")
    put("policy_role", "windows-limits", """description = "Office-hours access with limits"
owner = "ops@example.com"
issuer = "gitlab"
principals = ["ops-{namespace_path}", "readonly"]
max_ttl = "1h"
default_ttl = "10m"
extensions = ["permit-pty", "permit-agent-forwarding"]
source_address = ["192.0.2.0/24", "2001:db8::/32"]
source_address_claim = "runner_ip"
key_types = ["ssh-ed25519", "ssh-rsa"]
min_rsa_bits = 4096
rate_limit = "30/m"
identity_rate_limit = "5/m"
max_active_certs = 3
[claims]
sub = ["project_path:acme/*", "project_path:ops/*"]
ref_protected = "true"
[[window]]
days = ["mon", "tue", "wed", "thu", "fri"]
start = "08:00"
end = "18:30"
timezone = "Europe/Berlin"
[[window]]
days = ["sat"]
start = "22:00"
end = "02:00"
timezone = "UTC"
[approval]
required = 2
issuer = "people"
approvers = ["alice@example.com", "group:sre"]
expires = "15m"
""")


# ---- subject_key and hostsync_inputs (CA files) ----
def key_seeds(tmp):
    lines = {}
    for name, args in {
        "ed25519": ["-t", "ed25519"],
        "ecdsa-p256": ["-t", "ecdsa", "-b", "256"],
        "ecdsa-p384": ["-t", "ecdsa", "-b", "384"],
        "ecdsa-p521": ["-t", "ecdsa", "-b", "521"],
        "rsa-3072": ["-t", "rsa", "-b", "3072"],
        "rsa-2048": ["-t", "rsa", "-b", "2048"],
    }.items():
        path = os.path.join(tmp, name)
        sh("ssh-keygen", "-q", "-N", "", "-C", f"bot-{name}@ci", "-f", path, *args)
        lines[name] = open(path + ".pub").read()
        put("subject_key", name, lines[name])
    ca = os.path.join(tmp, "ed25519")
    sh("ssh-keygen", "-q", "-s", ca, "-I", "deploy:github:repo:acme/api:1", "-n", "deploy",
       "-V", "+5m", "-z", "42", os.path.join(tmp, "ecdsa-p256.pub"))
    cert = open(os.path.join(tmp, "ecdsa-p256-cert.pub")).read()
    put("subject_key", "certificate", cert)
    put("subject_key", "no-comment", " ".join(lines["ed25519"].split()[:2]))
    put("subject_key", "sk-ed25519",
        "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIEX/dQ0v4127bEo8eeG1EV0ApO2lWbSnN6RWusn/NjqIAAAABHNzaDo= bot")
    put("hostsync_inputs", "user-pub", lines["ed25519"])
    put("hostsync_inputs", "user-pub-two-keys",
        "# mayfly user CA keys (current and next)\n" + lines["ed25519"] + "\n" + lines["ecdsa-p384"])
    put("hostsync_inputs", "user-pub-crlf", lines["rsa-3072"].replace("\n", "\r\n"))
    put("hostsync_inputs", "user-pub-cert", cert)
    return ca


# ---- KRLs from ssh-keygen -k ----
def krl_seeds(tmp, ca):
    pub = ca + ".pub"
    specs = {
        "serials": "serial: 1\nserial: 5\nserial: 7\n",
        "range": "serial: 100-200000\n",
        "bitmap": "".join(f"serial: {s}\n" for s in range(1000, 1400, 3)),
        "key-ids": "id: deploy:github:repo:acme/api:42\nid: backup:k8s:x:7\n",
        "mixed": "serial: 9\nserial: 11-20\nid: a\n",
    }
    for name, spec in specs.items():
        sf = os.path.join(tmp, name + ".spec")
        open(sf, "w").write(spec)
        out = os.path.join(tmp, name + ".krl")
        sh("ssh-keygen", "-q", "-k", "-f", out, "-s", pub, "-z", "3", sf)
        data = open(out, "rb").read()
        put("krl_parse", name, data)
        put("hostsync_inputs", "krl-" + name, data)
    # Explicit keys and fingerprints (no CA).
    sf = os.path.join(tmp, "keys.spec")
    open(sf, "w").write(open(os.path.join(tmp, "rsa-2048.pub")).read()
                        + "hash: " + sh("ssh-keygen", "-l", "-f", os.path.join(tmp, "ecdsa-p384.pub")).split()[1].decode() + "\n")
    out = os.path.join(tmp, "keys.krl")
    sh("ssh-keygen", "-q", "-k", "-f", out, "-z", "4", sf)
    put("krl_parse", "keys", open(out, "rb").read())
    out = os.path.join(tmp, "empty.krl")
    sh("ssh-keygen", "-q", "-k", "-f", out, "-z", "1", "/dev/null")
    put("krl_parse", "empty", open(out, "rb").read())
    put("hostsync_inputs", "krl-empty", open(out, "rb").read())


# ---- audit_export: real-shaped records, hashed with chain encoding v1 ----
FIELDS_TEXT = ["client_addr", "issuer", "subject", "role", "reason_code", "reason"]


def enc_int(v):
    return b"\x00" if v is None else b"\x01" + struct.pack(">q", v)


def enc_text(v):
    if v is None:
        return b"\x00"
    b = v.encode()
    return b"\x02" + struct.pack(">I", len(b)) + b


def enc_list(v):
    out = b"\x03" + struct.pack(">I", len(v))
    for s in v:
        b = s.encode()
        out += struct.pack(">I", len(b)) + b
    return out


def record_hash(r, prev):
    m = b"mayfly.audit.v1\0" + prev + struct.pack(">Q", r["seq"])
    m += enc_int(r["time_ms"]) + enc_text(r["event"]) + enc_text(r["request_id"])
    for f in FIELDS_TEXT:
        m += enc_text(r.get(f))
    m += enc_int(r.get("serial")) + enc_text(r.get("key_id")) + enc_list(r.get("principals", []))
    m += enc_int(r.get("valid_after")) + enc_int(r.get("valid_before"))
    m += enc_text(r.get("key_fingerprint")) + enc_text(r.get("token_id")) + enc_int(r.get("token_exp"))
    m += enc_text(r.get("policy_digest")) + enc_text(r.get("cert_type")) + enc_text(r.get("ca_key"))
    m += enc_text(r.get("actor"))
    return hashlib.sha256(m).digest()


def iso_ms(ms):
    import datetime
    t = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def line(r, prev, h):
    def opt(d):
        return {k: v for k, v in d.items() if v not in (None, [], {})}
    cert = opt({"serial": r.get("serial"), "key_id": r.get("key_id"), "principals": r.get("principals", []),
                "valid_after": r.get("valid_after"), "valid_before": r.get("valid_before"),
                "type": r.get("cert_type"), "key_fingerprint": r.get("key_fingerprint"), "ca_key": r.get("ca_key")})
    out = {
        "@timestamp": iso_ms(r["time_ms"]),
        "message": r["event"],
        "ecs": {"version": "8.11.0"},
        "event": opt({"kind": "event", "category": ["iam"], "type": ["info"], "action": r["event"],
                      "outcome": "success", "reason": r.get("reason"), "id": h.hex(),
                      "dataset": "mayfly.audit", "module": "mayfly"}),
        "user": opt({"name": r.get("subject"), "domain": r.get("issuer")}),
        "ssh": opt({"cert": cert}),
        "mayfly": opt({"role": r.get("role"), "request_id": r["request_id"], "reason_code": r.get("reason_code"),
                       "actor": r.get("actor"),
                       "token": opt({"id": r.get("token_id"), "exp": r.get("token_exp")}),
                       "policy": opt({"digest": r.get("policy_digest")}),
                       "audit": {"seq": r["seq"], "hash": h.hex(), "prev_hash": prev.hex(), "chain": 1, "schema": 1}}),
    }
    if r.get("client_addr"):
        out["source"] = {"address": r["client_addr"]}
    return json.dumps({k: v for k, v in out.items() if v not in ({}, None)}, separators=(",", ":"))


def audit_seeds():
    t = 1750000000000
    recs = [
        {"event": "cert_issued", "request_id": "req-1", "client_addr": "10.1.2.3:50412", "issuer": "github",
         "subject": "repo:acme/api:ref:refs/heads/main", "role": "deploy", "serial": 29360128001,
         "key_id": "deploy:github:repo_acme/api_ref_refs/heads/main:29360128001", "principals": ["deploy"],
         "valid_after": 1749999990, "valid_before": 1750000300,
         "key_fingerprint": "SHA256:2Sf3k8n0Lw5kq4QmJ0oQb8v8bC0g1eQ0x4m0lI2yq4E", "token_id": "github:jti:8f1c",
         "token_exp": 1750000300, "policy_digest": "sha256:" + "ab" * 32, "cert_type": "user",
         "ca_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"},
        {"event": "cert_denied", "request_id": "req-2", "client_addr": "[2001:db8::7]:443", "issuer": "github",
         "subject": "repo:mallory/api:ref:refs/heads/main", "role": "deploy", "reason_code": "claim_mismatch",
         "reason": "deploy.toml claims.repository: \"mallory/api\" does not match \"acme/api\""},
        {"event": "token_refused", "request_id": "req-3", "reason_code": "bad_signature",
         "reason": "token signature is not valid"},
        {"event": "cert_revoked", "request_id": "req-4", "actor": "admin@example.com",
         "reason": "serial 29360128001 revoked: key leaked"},
        {"event": "disabled", "request_id": "req-5", "issuer": "github", "subject": "repo:acme/api:ref:refs/heads/main",
         "actor": "admin@example.com", "reason": "compromised runner"},
    ]
    prev = bytes(32)
    lines = []
    for i, r in enumerate(recs):
        r["seq"] = i + 1
        r["time_ms"] = t + i * 1234
        h = record_hash(r, prev)
        lines.append(line(r, prev, h))
        prev = h
    whole = "\n".join(lines) + "\n"
    put("audit_export", "export-5", whole)
    put("audit_export", "export-one", lines[0] + "\n")
    put("audit_export", "export-tail", "\n".join(lines[2:]) + "\n")
    put("audit_export", "export-edited", whole.replace("mallory", "mall0ry"))
    put("audit_export", "export-reordered", "\n".join([lines[1], lines[0]] + lines[2:]) + "\n")
    put("audit_export", "export-gap", "\n".join(lines[:2] + lines[3:]) + "\n")
    put("audit_export", "export-garbage-line", lines[0] + "\n{not json\n" + lines[1] + "\n")


def arbitrary_seeds():
    # Structured targets read their input through `arbitrary`; any bytes do.
    for t in ["krl_roundtrip", "audit_chain", "principal_template"]:
        for i, seed in enumerate([b"", bytes(range(64)), hashlib.sha512(t.encode()).digest() * 4]):
            put(t, f"bytes-{i}", seed)
    put("principal_template", "deploy-literal", b"\x01\x06deploy\x00")
    put("principal_template", "claim-template", b"\x02\x09ci-{sub}x\x04bot\x01\x03sub\x00\x05runner")


def main():
    if os.path.isdir(CORPUS):
        shutil.rmtree(CORPUS)
    with tempfile.TemporaryDirectory() as tmp:
        jwt_seeds()
        policy_seeds()
        ca = key_seeds(tmp)
        krl_seeds(tmp, ca)
        audit_seeds()
        arbitrary_seeds()


if __name__ == "__main__":
    main()
