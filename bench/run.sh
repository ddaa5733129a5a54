#!/usr/bin/env bash
# One command for the whole benchmark: sets up the fastmcp peer venv if missing, then runs
# bench/latency.py (all targets, stdio + HTTP, both eras) and prints the Markdown tables.
# Raw JSON results land in .bench-out/ (gitignored). Extra arguments go to latency.py, e.g.
#   bash bench/run.sh --runs 1 --calls 300 --transports stdio
# MCPWARD_REV=HEAD bash bench/run.sh   benchmarks that commit's src/ (a git-archive snapshot in .bench-out/),
#                                      so edits made to the work tree during the ~10-minute run cannot leak in.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${BENCH_PYTHON:-$ROOT/.venv/bin/python}"          # the project venv (mcpward + mcp 2.3.0)
PEER_VENV="${BENCH_FASTMCP_VENV:-$ROOT/.bench-out/venv-fastmcp}"   # isolated: never touches the project's deps
FASTMCP_PIN="fastmcp==4.1.2"   # 4.1.6 needs a certifi the index here lacks (docs/benchmarks.md)

if [[ ! -x "$PY" ]]; then
  echo "missing $PY: create the project venv first (python -m venv .venv && .venv/bin/pip install -e '.[test]')" >&2
  exit 2
fi
"$PY" -c 'import mcp, mcpward' || { echo "the project venv lacks mcp or mcpward: pip install -e '.[test]'" >&2; exit 2; }

if [[ ! -x "$PEER_VENV/bin/python" ]] || ! "$PEER_VENV/bin/python" -c 'import fastmcp' 2>/dev/null; then
  echo "setting up $PEER_VENV with $FASTMCP_PIN ..." >&2
  BASE_PY="$("$PY" -c 'import sys; print(sys._base_executable)')"
  "$BASE_PY" -m venv "$PEER_VENV"
  "$PEER_VENV/bin/pip" install --quiet --disable-pip-version-check "$FASTMCP_PIN" >&2
fi

mkdir -p "$ROOT/.bench-out"
EXTRA=()
if [[ -n "${MCPWARD_REV:-}" ]]; then
  SHA="$(git -C "$ROOT" rev-parse --short "$MCPWARD_REV")"
  SNAP="$ROOT/.bench-out/src-$SHA"
  if [[ ! -d "$SNAP/src/mcpward" ]]; then
    mkdir -p "$SNAP"
    git -C "$ROOT" archive "$SHA" src | tar -x -C "$SNAP"
  fi
  echo "benchmarking mcpward at $SHA ($SNAP/src)" >&2
  EXTRA=(--mcpward-src "$SNAP/src")
fi
exec "$PY" "$ROOT/bench/latency.py" --fastmcp-python "$PEER_VENV/bin/python" "${EXTRA[@]}" "$@"
