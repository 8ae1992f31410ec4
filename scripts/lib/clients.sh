#!/usr/bin/env bash
# The client stage of scripts/test: real PostgreSQL clients, installed from npm and PyPI at
# the exact versions in tests/clients (package-lock.json, requirements.txt), run against a
# fresh `berth up` on both proxy ports, with the connection strings `berth connection`
# prints, under each trust setup a user has. One line per client x port x setup; exits 1 if
# any failed. Then checks that the checks can fail: a client given another CA must refuse.
#
#   scripts/lib/clients.sh [BERTH_BINARY]     (default target/debug/berth)
#
# Installs are cached by the hash of what they are made from, under
# ${BERTH_CLIENTS_CACHE:-~/.cache/berth-clients}, so a clean clone installs once per machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
BERTH=$(realpath "${1:-target/debug/berth}")
SRC=$REPO/tests/clients
CACHE=${BERTH_CLIENTS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/berth-clients}
DEADLINE_SECONDS=60

# BERTH_CLIENTS="node-postgres psycopg" runs only those.
read -ra CLIENTS <<<"${BERTH_CLIENTS:-node-postgres prisma drizzle psycopg2 psycopg sqlalchemy-psycopg2 sqlalchemy-asyncpg}"
PORTS=(direct pooled)
# Trust setups, each a function trust_<name> (dashes as underscores); see the ACME note below.
SETUPS=(verify-full require-trusted require-acme verify-acme)
# Clients a setup cannot run, and why: a line says so at each run.
declare -A SKIP=([verify-acme]="node-postgres prisma sqlalchemy-asyncpg")
declare -A SKIP_WHY=([verify-acme]="they open sslrootcert=system as a file named system")

RUN=$(mktemp -d /tmp/berth-clients.XXXXXX) # 0700: berth up's stdout shows the admin key
UP_PIDS=()
DATA_DIRS=()
cleanup() {
  local pid
  for pid in "${UP_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
  rm -rf "$RUN" "${DATA_DIRS[@]}"
}
trap cleanup EXIT

say() { printf '%s\n' "$*" >&2; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# --- installs ---------------------------------------------------------------------------

# node_modules for tests/clients, with Prisma Client generated, in $CACHE/node-<hash>.
# --ignore-scripts: no install script runs (@prisma/engines' would download engines from
# binaries.prisma.sh); `prisma generate` needs none with engineType "client" and a
# migration adapter in prisma.config.js. DATABASE_URL is only read, never connected to:
# without it `prisma generate` cannot read the generator and falls back to the Rust engine.
install_node() {
  local key dir
  key=$(hash_of "$SRC/package-lock.json" "$SRC/prisma/schema.prisma" "$SRC/prisma.config.js" <(node --version))
  dir=$CACHE/node-$key
  mkdir -p "$CACHE"
  (
    flock 9
    [ -e "$dir/.complete" ] && exit 0
    say "installing the Node clients into $dir"
    rm -rf "$dir" && mkdir -p "$dir"
    cp -r "$SRC/package.json" "$SRC/package-lock.json" "$SRC/prisma" "$SRC/prisma.config.js" "$dir/"
    cd "$dir"
    npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2
    CHECKPOINT_DISABLE=1 PRISMA_HIDE_UPDATE_MESSAGE=1 \
      DATABASE_URL=postgresql://generate-only@localhost/unused \
      node_modules/.bin/prisma generate >"$RUN/prisma-generate.log" 2>&1 ||
      { cat "$RUN/prisma-generate.log" >&2; exit 1; }
    touch .complete
  ) 9>"$CACHE/.node.lock"
  NODE_DIR=$dir
}

# pip itself, from PyPI at an exact version, run from its wheel: a venv made with pip needs
# Debian's python3-venv, which depends on ca-certificates (see BERTH_PACKAGES).
PIP_WHEEL_URL=https://files.pythonhosted.org/packages/07/25/ee8c38ae72d66b844ce8eb9711ba905dba21ca1a8a0c960057c41cd23337/pip-26.3-py3-none-any.whl
PIP_WHEEL_SHA256=f3b60b20ffaadd4415ed7957212a38ac63fa4c5fa375bd0f4a797777940fad13

# A virtualenv with requirements.txt in $CACHE/python-<hash>, from PyPI itself: this
# machine's pip configuration (find-links, another index) must not stand in for it.
install_python() {
  local key dir
  key=$(hash_of "$SRC/requirements.txt" <(python3 -VV; command -v python3; echo "$PIP_WHEEL_SHA256"))
  dir=$CACHE/python-$key
  mkdir -p "$CACHE"
  (
    flock 9
    [ -e "$dir/.complete" ] && exit 0
    say "installing the Python clients into $dir"
    rm -rf "$dir"
    python3 -m venv --without-pip "$dir"
    local wheel=$dir/${PIP_WHEEL_URL##*/} broken
    curl -fsSL --retry 3 -o "$wheel" "$PIP_WHEEL_URL"
    sha256sum --quiet -c <<<"$PIP_WHEEL_SHA256  $wheel"
    pip() {
      env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_NO_INDEX PIP_CONFIG_FILE=/dev/null \
        "$dir/bin/python" "$wheel/pip" --disable-pip-version-check "$@"
    }
    pip install --quiet --index-url https://pypi.org/simple --no-deps --only-binary=:all: \
      -r "$SRC/requirements.txt" >&2
    broken=$(pip check) || { say "$broken"; exit 1; }
    touch "$dir/.complete"
  ) 9>"$CACHE/.python.lock"
  PYTHON=$dir/bin/python
}

# --- berth up ---------------------------------------------------------------------------

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_berth NAME [berth up flags...]: a fresh `berth up` on free loopback ports whose data
# directory is $RUN/NAME.data; returns once it has printed its banner.
start_berth() {
  local name=$1 data
  shift
  data=$(mktemp -d "/tmp/berth-clients-$name.XXXXXX") # PostgreSQL runs as postgres: 0755
  chmod 755 "$data"
  DATA_DIRS+=("$data")
  ln -s "$data" "$RUN/$name.data"
  : >"$RUN/$name.out"
  "$BERTH" up --data "$data" --api-listen "127.0.0.1:$(free_port)" \
    --pooled-listen "127.0.0.1:$(free_port)" --direct-listen "127.0.0.1:$(free_port)" "$@" \
    >"$RUN/$name.out" 2>"$RUN/$name.log" &
  local pid=$!
  UP_PIDS+=("$pid")
  local waited=0
  until grep -q '^Press Ctrl-C' "$RUN/$name.out"; do
    if ! kill -0 "$pid" 2>/dev/null || [ "$waited" -ge 600 ]; then
      say "berth up ($name) did not come up:"
      tail -n 30 "$RUN/$name.log" >&2
      exit 1
    fi
    sleep 0.2
    waited=$((waited + 1))
  done
}

# berth_cli NAME ARGS...: the CLI as a user runs it against the berth up called NAME.
berth_cli() {
  local name=$1
  shift
  env -u BERTH_API_URL -u BERTH_API_KEY "$BERTH" "$@" --data "$RUN/$name.data"
}

# wait_served URL [VAR=value...]: until psycopg2 connects with URL (routes follow the
# catalog a moment after the project is ready). The string goes in the environment, not on
# a command line.
wait_served() {
  local url=$1 waited=0
  shift
  until BERTH_CLIENT_URL=$url env "$@" "$PYTHON" -c \
    'import os, psycopg2; psycopg2.connect(os.environ["BERTH_CLIENT_URL"]).close()' 2>/dev/null; do
    [ "$waited" -lt 150 ] || { say "project clients is not served"; exit 1; }
    sleep 0.2
    waited=$((waited + 1))
  done
}

pooled_flag() { [ "$1" = pooled ] && echo --pooled || true; }

# --- trust setups -----------------------------------------------------------------------
# trust_<setup> PORT sets CASE_URL (the string a user would give the client) and CASE_ENV
# (VAR=value words the client runs with; NODE_EXTRA_CA_CERTS and PG* are unset otherwise).
#
# (c), the ACME setup, has a berth up of its own (started by start_acme below).

LOCAL=local # the berth up with its local CA that both setups below share

# (a) `berth connection --verify`: sslmode=verify-full&sslrootcert=<the CA file>, host
# localhost; nothing else is trusted.
trust_verify_full() {
  CASE_URL=$(berth_cli "$LOCAL" connection clients $(pooled_flag "$1") --verify)
  CASE_ENV=()
}

# (b) The string as `berth connection` prints it (sslmode=require), with the CA from
# GET /v1/tls/ca.pem trusted as docs/API.md says: NODE_EXTRA_CA_CERTS for Node (what
# `berth trust` prints; node-postgres verifies require as verify-full) and PGSSLROOTCERT
# for libpq and asyncpg (require then verifies the chain, not the host name). postgres.js
# does not verify with require, trusted or not.
trust_require_trusted() {
  CASE_URL=$(berth_cli "$LOCAL" connection clients $(pooled_flag "$1"))
  CASE_ENV=("NODE_EXTRA_CA_CERTS=$RUN/berth-ca.pem" "PGSSLROOTCERT=$RUN/berth-ca.pem")
}

# (c) ACME: `berth up --public-host db.berth.test --acme-directory <pebble>`, Let's Encrypt's
# test CA on loopback answered by Berth's own DNS-01 responder, and the string as `berth
# connection` prints it (sslmode=require, host db.berth.test). What
# stands in for the public world, through the environment only (never the system store or
# /etc/hosts): pebble's root, new at every start, trusted as a public CA is by default
# (NODE_EXTRA_CA_CERTS for Node, PGSSLROOTCERT for libpq and asyncpg, with which require
# verifies the chain), and the DNS record of the public host: nss_wrapper (LD_PRELOAD,
# NSS_WRAPPER_HOSTS) answers getaddrinfo for the printed host with 127.0.0.1, so each client
# resolves the printed host itself and verifies the certificate for it.
ACME=acme
ACME_HOST=db.berth.test
ACME_DEADLINE_SECONDS=60
NSS_WRAPPER=$(dpkg -L libnss-wrapper 2>/dev/null | grep -m1 '/libnss_wrapper\.so$' || true)

# A UDP and TCP port free on loopback at once (Berth's responder; pebble asks it).
free_dns_port() {
  python3 -c '
import socket
while True:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
    t = socket.socket(); port = u.getsockname()[1]
    try:
        t.bind(("127.0.0.1", port)); print(port); break
    except OSError:
        pass'
}

# pebble on free loopback ports, its HTTPS certificate (for 127.0.0.1) signed by a CA made
# here; sets PEBBLE_DIRECTORY, PEBBLE_HTTPS_CA and PEBBLE_MANAGEMENT.
start_pebble() {
  local dns_port=$1 dir=$RUN/pebble port management waited=0
  mkdir -p "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=pebble-https-ca -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  openssl req -x509 -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -newkey ec \
    -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE \
    -addext extendedKeyUsage=serverAuth -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
  port=$(free_port)
  management=$(free_port)
  cat >"$dir/config.json" <<JSON
{"pebble": {"listenAddress": "127.0.0.1:$port", "managementListenAddress": "127.0.0.1:$management",
  "certificate": "$dir/cert.pem", "privateKey": "$dir/key.pem",
  "httpPort": $(free_port), "tlsPort": $(free_port), "ocspResponderURL": "",
  "externalAccountBindingRequired": false}}
JSON
  PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 pebble -config "$dir/config.json" \
    -dnsserver "127.0.0.1:$dns_port" >"$RUN/pebble.log" 2>&1 &
  UP_PIDS+=("$!")
  until curl -fsS --cacert "$dir/ca.pem" -o /dev/null "https://127.0.0.1:$port/dir" 2>/dev/null; do
    [ "$waited" -lt 100 ] || { say "pebble did not come up:"; tail -n 20 "$RUN/pebble.log" >&2; exit 1; }
    sleep 0.1
    waited=$((waited + 1))
  done
  PEBBLE_DIRECTORY=https://127.0.0.1:$port/dir
  PEBBLE_HTTPS_CA=$dir/ca.pem
  PEBBLE_MANAGEMENT=https://127.0.0.1:$management
}

# pebble, then berth up under ACME with the project clients; returns once the proxy serves
# pebble's certificate for clients.db.berth.test.
start_acme() {
  local dns_port waited=0 started=$SECONDS url hostport issuer
  [ -n "$NSS_WRAPPER" ] && [ -r "$NSS_WRAPPER" ] || { say "libnss-wrapper is needed (BERTH_PACKAGES)"; exit 1; }
  dns_port=$(free_dns_port)
  start_pebble "$dns_port"
  start_berth "$ACME" --public-host "$ACME_HOST" --acme-directory "$PEBBLE_DIRECTORY" \
    --acme-ca-root "$PEBBLE_HTTPS_CA" --acme-dns-listen "127.0.0.1:$dns_port"
  curl -fsS --cacert "$PEBBLE_HTTPS_CA" -o "$RUN/pebble-root.pem" "$PEBBLE_MANAGEMENT/roots/0"
  berth_cli "$ACME" projects create clients >/dev/null
  until grep -q 'ACME certificate installed' "$RUN/$ACME.log"; do
    if grep -q 'ACME certificate not obtained' "$RUN/$ACME.log" || [ "$waited" -ge $((ACME_DEADLINE_SECONDS * 5)) ]; then
      say "no certificate from pebble within ${ACME_DEADLINE_SECONDS} s:"
      tail -n 20 "$RUN/$ACME.log" >&2
      exit 1
    fi
    sleep 0.2
    waited=$((waited + 1))
  done
  # What the direct port serves for the printed host, verified against pebble's root.
  url=$(berth_cli "$ACME" connection clients)
  hostport=${url#*@}
  hostport=${hostport%%/*}
  printf '127.0.0.1 %s\n' "${hostport%:*}" >"$RUN/hosts"
  issuer=$(openssl s_client -starttls postgres -connect "127.0.0.1:${hostport##*:}" \
    -servername "${hostport%:*}" -verify_hostname "${hostport%:*}" -CAfile "$RUN/pebble-root.pem" \
    -verify_return_error </dev/null 2>/dev/null | sed -n 's/^issuer=//p') ||
    { say "the proxy does not serve a certificate for ${hostport%:*} that pebble's root verifies"; exit 1; }
  say "ACME: certificate for ${hostport%:*} from pebble (issuer $issuer) after $((SECONDS - started)) s"
  wait_served "$url" "LD_PRELOAD=$NSS_WRAPPER" "NSS_WRAPPER_HOSTS=$RUN/hosts"
  ACME_STARTED=1
}

trust_require_acme() {
  [ -n "${ACME_STARTED:-}" ] || start_acme
  CASE_URL=$(berth_cli "$ACME" connection clients $(pooled_flag "$1"))
  CASE_ENV=("LD_PRELOAD=$NSS_WRAPPER" "NSS_WRAPPER_HOSTS=$RUN/hosts"
    "NODE_EXTRA_CA_CERTS=$RUN/pebble-root.pem" "PGSSLROOTCERT=$RUN/pebble-root.pem")
}

# (d) `berth connection --verify` under ACME: sslmode=verify-full&sslrootcert=system, which
# libpq 16+ verifies against the system store, that is OpenSSL's default file, and which
# SSL_CERT_FILE replaces for the one process (so pebble's root stands in for the public CAs
# and nothing else is trusted; the system store is not touched). For postgres.js, which
# ignores sslrootcert and verifies against Node's CAs, NODE_EXTRA_CA_CERTS. node-postgres,
# Prisma's adapter-pg and asyncpg 0.32 open sslrootcert=system as a file and fail with
# ENOENT whatever is trusted: they take the printed sslmode=require string, (c) above.
trust_verify_acme() {
  [ -n "${ACME_STARTED:-}" ] || start_acme
  CASE_URL=$(berth_cli "$ACME" connection clients $(pooled_flag "$1") --verify)
  CASE_ENV=("LD_PRELOAD=$NSS_WRAPPER" "NSS_WRAPPER_HOSTS=$RUN/hosts"
    "SSL_CERT_FILE=$RUN/pebble-root.pem" "NODE_EXTRA_CA_CERTS=$RUN/pebble-root.pem")
}

# --- running one case -------------------------------------------------------------------

client_command() {
  case $1 in
    node-postgres) CMD=(node node_postgres.mjs) ;;
    prisma) CMD=(node prisma.mjs) ;;
    drizzle) CMD=(node drizzle.mjs) ;;
    psycopg2) CMD=("$PYTHON" psycopg2_check.py) ;;
    psycopg) CMD=("$PYTHON" psycopg_check.py) ;;
    sqlalchemy-psycopg2) CMD=("$PYTHON" sqlalchemy_psycopg2.py) ;;
    sqlalchemy-asyncpg) CMD=("$PYTHON" sqlalchemy_asyncpg.py) ;;
    *) say "unknown client $1" && exit 2 ;;
  esac
  case $1 in node-postgres | prisma | drizzle) CMD_DIR=$RUN/node ;; *) CMD_DIR=$SRC ;; esac
}

# run_case CLIENT PORT LABEL: runs CLIENT with CASE_URL and CASE_ENV; sets CASE_OUTPUT
# (what it printed, the password masked) and returns its exit status.
run_case() {
  local client=$1 port=$2 label=$3 password status=0
  client_command "$client"
  password=${CASE_URL#*://*:}
  password=${password%%@*}
  (
    cd "$CMD_DIR"
    # Exported, not env(1) arguments: a command line is readable by every user (ps).
    export BERTH_CLIENT_URL=$CASE_URL BERTH_CLIENT_PORT=$port BERTH_CLIENT_CASE=$label \
      BERTH_CLIENT_DEADLINE_SECONDS=$DEADLINE_SECONDS
    exec env -u NODE_EXTRA_CA_CERTS -u PGSSLROOTCERT -u PGSSLMODE -u PGHOST -u PGPORT -u PGUSER \
      -u PGPASSWORD -u PGDATABASE -u PGSERVICE -u DATABASE_URL "${CASE_ENV[@]}" \
      timeout -k 5 $((DEADLINE_SECONDS + 30)) "${CMD[@]}"
  ) >"$RUN/case.out" 2>&1 || status=$?
  CASE_OUTPUT=$(<"$RUN/case.out")
  [ -z "$password" ] || CASE_OUTPUT=${CASE_OUTPUT//"$password"/***}
  [ "$status" -ne 124 ] || CASE_OUTPUT+=$'\n'"FAIL $label: killed by timeout(1) after $((DEADLINE_SECONDS + 30)) s"
  return "$status"
}

FAILED=0
report() { # report ok|FAIL CLIENT PORT SETUP [detail]
  printf '%-4s  %-19s  %-6s  %-26s %s\n' "$1" "$2" "$3" "$4" "${5:-}"
  [ "$1" = ok ] || FAILED=$((FAILED + 1))
}

# Runs every client on both ports under SETUP; prints one line per case, and on failure
# what the client said.
run_setup() {
  local setup=$1 port client skipped=()
  for client in "${CLIENTS[@]}"; do
    [[ " ${SKIP[$setup]:-} " != *" $client "* ]] || skipped+=("$client")
  done
  for port in "${PORTS[@]}"; do
    "trust_${setup//-/_}" "$port"
    for client in "${CLIENTS[@]}"; do
      [[ " ${skipped[*]} " != *" $client "* ]] || continue
      if run_case "$client" "$port" "$client $port $setup"; then
        report ok "$client" "$port" "$setup"
      else
        report FAIL "$client" "$port" "$setup"
        printf '%s\n' "$CASE_OUTPUT" | tail -n 15 | sed 's/^/      /'
      fi
    done
  done
  [ ${#skipped[@]} -eq 0 ] || printf 'not run under %s: %s (%s)\n' "$setup" "${skipped[*]}" "${SKIP_WHY[$setup]}"
}

# expect_refusal CLIENT PORT WHAT: the case set up by the caller must fail on the
# certificate (not on a deadline or an assertion).
expect_refusal() {
  local client=$1 port=$2 what=$3 said
  if run_case "$client" "$port" "$client $port $what"; then
    report FAIL "$client" "$port" "$what" "connected, expected a certificate refusal"
    return
  fi
  # What the client said after "FAIL <case>:", on one line.
  said=$(sed -n "/^FAIL $client $port $what: /,\$p" <<<"$CASE_OUTPUT" | tr -s '\n ' ' ')
  said=${said#"FAIL $client $port $what: "}
  if grep -qiE 'certificate|verify|ssl|tls' <<<"$said" && ! grep -q deadline <<<"$said"; then
    report ok "$client" "$port" "$what" "refused: $(cut -c1-150 <<<"$said")"
  else
    report FAIL "$client" "$port" "$what" "failed, but not on the certificate:"
    printf '%s\n' "$CASE_OUTPUT" | tail -n 15 | sed 's/^/      /'
  fi
}

# --- the stage --------------------------------------------------------------------------

main() {
  command -v node >/dev/null && command -v npm >/dev/null || { say "node and npm are needed (Node 20 or newer)"; exit 1; }
  install_node
  install_python
  mkdir -p "$RUN/node"
  cp "$SRC"/*.mjs "$RUN/node/"
  ln -s "$NODE_DIR/node_modules" "$RUN/node/node_modules"

  start_berth "$LOCAL"
  berth_cli "$LOCAL" projects create clients >/dev/null
  curl -fsS "$(cat "$RUN/$LOCAL.data/api.url")/v1/tls/ca.pem" -o "$RUN/berth-ca.pem"
  wait_served "$(berth_cli "$LOCAL" connection clients)"

  local setup
  for setup in "${SETUPS[@]}"; do
    run_setup "$setup"
  done

  # The checks can fail: a CA that did not sign Berth's certificate is refused, and so is
  # the printed string by node-postgres and Prisma when Node does not trust the CA. (Not by
  # postgres.js: it does not verify with sslmode=require.)
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$RUN/other-ca.key" -out "$RUN/other-ca.pem" 2>/dev/null
  local client
  trust_verify_full direct
  CASE_URL=${CASE_URL%%sslrootcert=*}sslrootcert=$RUN/other-ca.pem # the last parameter
  for client in "${CLIENTS[@]}"; do
    expect_refusal "$client" direct "verify-full, another CA"
  done
  trust_require_trusted direct
  CASE_ENV=("NODE_EXTRA_CA_CERTS=$RUN/other-ca.pem" "PGSSLROOTCERT=$RUN/other-ca.pem")
  for client in "${CLIENTS[@]}"; do
    [ "$client" = drizzle ] || expect_refusal "$client" direct "require, another CA"
  done
  CASE_ENV=()
  for client in "${CLIENTS[@]}"; do
    case $client in node-postgres | prisma) expect_refusal "$client" direct "require, CA not trusted" ;; esac
  done
  # Under ACME: node-postgres refuses pebble's certificate when Node does not trust its root,
  trust_require_acme direct
  CASE_ENV=("${CASE_ENV[@]:0:2}") # the host's stand-in DNS record only
  for client in "${CLIENTS[@]}"; do
    [ "$client" != node-postgres ] || expect_refusal "$client" direct "require-acme, root not trusted"
  done
  # And psycopg2 the --verify string when SSL_CERT_FILE does not name pebble's root: the
  # system store does not hold it.
  trust_verify_acme direct
  CASE_ENV=("${CASE_ENV[@]:0:2}")
  for client in "${CLIENTS[@]}"; do
    [ "$client" != psycopg2 ] || expect_refusal "$client" direct "verify-acme, root not trusted"
  done

  if [ "$FAILED" -gt 0 ]; then
    say "clients: $FAILED failed"
    exit 1
  fi
  say "clients: all passed"
}

main
