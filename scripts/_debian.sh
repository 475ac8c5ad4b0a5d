# Sourced by scripts/_env.sh (and tests/test_debian_packages.py): one function.
# shellcheck shell=bash
# ensure_debian_packages PKG...: install those of the Debian packages PKG that are
# missing, with one apt-get update per run, when running as root with apt-get. Otherwise
# name the missing ones and go on: the tests that need one skip with the reason. With
# RTC_REQUIRE_E2E=1 (.ci/run) a package that cannot be installed stops the run instead
# (exit 1), as the tests that need it would fail.
_APT_UPDATED=""
_missing_packages() {
  if [ "${RTC_REQUIRE_E2E:-}" = 1 ]; then
    echo "RTC_REQUIRE_E2E=1: cannot go on without the Debian packages: $*" >&2
    exit 1
  fi
}
ensure_debian_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
      missing+=("$pkg")
    fi
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "missing Debian packages: ${missing[*]} (not root, or no apt-get: the tests" \
      "that need them are skipped)" >&2
    _missing_packages "${missing[@]}"
    return 0
  fi
  echo "installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  if { [ -n "$_APT_UPDATED" ] || apt-get update -qq >&2; } \
    && _APT_UPDATED=1 \
    && apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
    return 0
  fi
  echo "could not install: ${missing[*]} (the tests that need them are skipped)" >&2
  _missing_packages "${missing[@]}"
}
