#!/usr/bin/env bash
# Installs what the demo and the tests need, idempotently, on a fresh Debian machine:
# bubblewrap (the sandbox), a Python venv with mcpward and its test peers, and Node 22 with the MCP conformance
# suite, the Inspector CLI and the reference servers (pinned in tools/package.json).
# `--tests` also installs redis-server (the tests start their own on a loopback port, for the
# multi-replica limits); the demo does not need it.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
missing=()
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
command -v git >/dev/null 2>&1 || missing+=(git)
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)  # the default sandbox backend
if [ "${1:-}" = "--tests" ]; then
    [ -x /usr/bin/redis-server ] || missing+=(redis-server)
fi
"$PY" -c "import venv, ensurepip" >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: please install: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
    echo "setup: installing Python packages into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[test]"
    touch .venv/.installed
fi

if [ ! -f .tools/node/.installed ] || [ tools/package-lock.json -nt .tools/node/.installed ]; then
    echo "setup: installing Node 22 and the MCP test tools into .tools/node" >&2
    mkdir -p .tools/node
    cp tools/package.json tools/package-lock.json .tools/node/
    (cd .tools/node && npm ci --no-audit --no-fund --loglevel=error)
    touch .tools/node/.installed
fi
