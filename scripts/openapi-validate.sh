#!/usr/bin/env bash
# Validates OpenAPI documents (JSON or YAML) with openapi-spec-validator:
#   scripts/openapi-validate.sh api.yaml [more.json ...]
# The validator is installed, pinned, into its own virtualenv on first use, under
# $IDEM_OPENAPI_VENV or ~/.cache/idem (the crate's tests call this script). Exit codes:
# 0 valid, 1 invalid, 3 the validator could not be installed.
set -euo pipefail

VERSION=0.9.0
VENV="${IDEM_OPENAPI_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/idem/openapi-spec-validator-$VERSION}"
BIN="$VENV/bin/openapi-spec-validator"

if [ $# -eq 0 ]; then
    echo "usage: $0 FILE..." >&2
    exit 2
fi

if [ ! -x "$BIN" ]; then
    mkdir -p "$(dirname "$VENV")"
    # Tests run side by side: one installs, the others wait for it.
    exec 9>"$VENV.lock"
    flock 9
    if [ ! -x "$BIN" ]; then
        rm -rf "$VENV"
        if ! python3 -m venv "$VENV" >&2; then
            echo "openapi-validate: cannot create a virtualenv at $VENV (is python3-venv installed?)" >&2
            exit 3
        fi
        if ! "$VENV/bin/pip" install --quiet --disable-pip-version-check "openapi-spec-validator==$VERSION" >&2; then
            rm -rf "$VENV"
            echo "openapi-validate: cannot install openapi-spec-validator==$VERSION from PyPI" >&2
            exit 3
        fi
    fi
    exec 9>&-
fi

exec "$BIN" "$@"
