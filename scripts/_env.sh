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
# ensure_debian_packages PKG... (scripts/_debian.sh)
# shellcheck source=scripts/_debian.sh
source "$ROOT/scripts/_debian.sh"
# python-magic needs libmagic (Debian package libmagic1).
if ! "$VENV_PY" -c "import magic" 2>/dev/null; then
  ensure_debian_packages libmagic1
  if ! "$VENV_PY" -c "import magic" 2>/dev/null; then
    echo "libmagic is missing: install the Debian package libmagic1 (or your OS's libmagic)" >&2
    exit 1
  fi
fi
