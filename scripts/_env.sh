# Shared by demo.sh and test.sh: create or reuse .venv and install the project.
# Usage: source scripts/_env.sh EXTRAS   (e.g. "test" or "uvloop")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $("$PYTHON" --version)" >&2
  "$PYTHON" -m venv .venv
fi
VENV_PY="$ROOT/.venv/bin/python"
# Reinstall only when pyproject.toml changed since the last install.
stamp=".venv/.installed-$1"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV_PY" -m pip install --quiet --upgrade pip >&2
  "$VENV_PY" -m pip install --quiet -e ".[$1]" >&2
  touch "$stamp"
fi
# ensure_debian_packages PKG...: install the Debian packages that are missing, when
# running as root with apt-get (one `apt-get update` per run); otherwise say which are
# missing. It never fails: a test that needs an absent package is skipped with the reason.
_apt_updated=0
ensure_debian_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$pkg")
    fi
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "missing Debian packages: ${missing[*]} (install them as root; the tests" \
      "that need them are skipped)" >&2
    return 0
  fi
  if [ "$_apt_updated" = 0 ]; then
    apt-get update -qq >&2 || true
    _apt_updated=1
  fi
  echo "installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 \
    || echo "could not install ${missing[*]}; the tests that need them are skipped" >&2
}
# python-magic needs libmagic (Debian package libmagic1).
if ! "$VENV_PY" -c "import magic" 2>/dev/null; then
  ensure_debian_packages libmagic1
  if ! "$VENV_PY" -c "import magic" 2>/dev/null; then
    echo "libmagic is missing: install the Debian package libmagic1 (or your OS's libmagic)" >&2
    exit 1
  fi
fi
# What the tests need beyond Python: coturn (turnserver) for the TURN tests; nftables and
# iproute2 for the NAT lab (scripts/nat_lab.sh).
case ",$1," in
  *,test,*) ensure_debian_packages coturn nftables iproute2 ;;
esac
