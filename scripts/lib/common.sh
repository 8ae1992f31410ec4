# Shared by scripts/up and scripts/test: install what a fresh Debian machine lacks
# (idempotently: nothing is installed when everything is present) and check the toolchain.

ensure_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 || {
    echo "cargo not found: install Rust (stable, 1.88 or newer) with rustup" >&2
    exit 1
  }
}

# The one list of system packages both scripts install: the PostgreSQL server and clients,
# and what the build needs (pg_query's build runs bindgen, which loads libclang and its
# headers; without them `cargo build` stops with "Unable to find libclang"), and
# ca-certificates for `berth trust` (update-ca-certificates) and its test.
# Not ca-certificates: every machine that reaches crates.io has a CA bundle already, and
# installing the package regenerates that bundle from Debian's list, dropping any CA the
# machine's network needs (the fresh-machine check lost crates.io that way). `berth trust`
# says to install it when update-ca-certificates is missing.
# The client stage of scripts/test (scripts/lib/clients.sh) adds python3, curl and openssl,
# which minimal images lack; not python3-venv or python3-pip, which depend on
# ca-certificates (the stage makes its venv --without-pip and runs pip from its wheel).
# pebble, Let's Encrypt's ACME test server (depends on libc6 only), for the ACME test
# (crates/berth/tests/acme.rs), which fails when it is missing rather than skipping.
# libnss-wrapper (depends on libc6 only) for the client stage's ACME setup: its LD_PRELOAD
# library answers getaddrinfo for the public host from a file (NSS_WRAPPER_HOSTS), the
# stand-in for its DNS record, so /etc/hosts is never edited.
BERTH_PACKAGES=(postgresql postgresql-client postgresql-contrib pkg-config gcc libc6-dev
  libclang1-14 libclang-common-14-dev python3 curl openssl pebble libnss-wrapper)

# Node and npm for the client stage, looked for and not installed: Debian's nodejs and npm
# depend on ca-certificates (above), and Node from NodeSource bundles npm.
ensure_node() {
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 && return 0
  echo "node and npm not found: install Node.js 20 or newer (with npm) for the client tests" >&2
  exit 1
}
