#!/usr/bin/env bash
# Run the shared JSON-RPC benchmark harness (../shared/bench, read-only) with ezipc's rows.
#
#   bench/run_shared.sh                       decode + encode, quick mode, the usual rows
#   bench/run_shared.sh --bench decode --repeat 3
#   bench/run_shared.sh --impl floor_stdlib,ezipc,ezipc_fast --bench encode
#
# Copies the harness to $EZIPC_BENCH_DIR (default: a new temp dir), drops
# bench/shared_impl/*.py into its impls/, makes sure ezipc is installed (editable, this
# checkout) in the harness venv ($EZIPC_BENCH_VENV, default ~/.cache/ezipc-bench/venv,
# made by the harness's setup.sh), and runs its run.py with the arguments given.
# Without --impl: floor_stdlib, floor_msgspec, sansio, pylsp, mcp_sdk, vscode, ezipc,
# ezipc_fast. Without --bench: decode,encode. Without --full: --quick.
#
#   bench/run_shared.sh --baseline REV ...   also rows base_ezipc, base_ezipc_fast, ... (named
#                                           "... @REV"): that revision's packages and rows,
#                                           measured in the same run (before/after a change)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
project="$(dirname "$here")"
src="${EZIPC_SHARED_BENCH:-$project/../shared/bench}"
venv="${EZIPC_BENCH_VENV:-$HOME/.cache/ezipc-bench/venv}"
dir="${EZIPC_BENCH_DIR:-$(mktemp -d -t ezipc-bench.XXXXXX)}"

[ -f "$src/run.py" ] || { echo "no harness at $src (set EZIPC_SHARED_BENCH)" >&2; exit 2; }
[ -x "$venv/bin/python" ] || { echo "no venv at $venv: run $src/setup.sh first" >&2; exit 2; }

baseline=""
args=()
while [ $# -gt 0 ]; do
  if [ "$1" = --baseline ]; then baseline="$2"; shift 2; else args+=("$1"); shift; fi
done
set -- "${args[@]+"${args[@]}"}"

mkdir -p "$dir"
cp -R "$src"/. "$dir"/
cp "$here"/shared_impl/*.py "$dir"/impls/

if [ -n "$baseline" ]; then
  # The baseline's own packages and rows, as base_*.py impls that import them first.
  rm -rf "$dir/baseline" && mkdir -p "$dir/baseline"
  git -C "$project" archive "$baseline" ezipc_proto ezipc_adapters bench/shared_impl | tar -x -C "$dir/baseline"
  for f in "$dir"/baseline/bench/shared_impl/ezipc*.py; do
    python3 - "$f" "$dir/impls/base_$(basename "$f")" "$dir/baseline" "$baseline" <<'PY'
import re, sys
src, dst, root, rev = sys.argv[1:]
text = open(src).read()
text = re.sub(r'^NAME = "([^"]*)"', lambda m: f'NAME = "{m[1]} @{rev}"', text, count=1, flags=re.M)
# a row built on another (ezipc_fast on ezipc) uses the baseline's copy of it
text = re.sub(r'^from impls import (ezipc\w*)', r'from impls import base_\1', text, flags=re.M)
hook = f"import sys as _sys\n\n_sys.path.insert(0, {root!r})  # the baseline's packages first\n"
future = "from __future__ import annotations\n"
text = text.replace(future, future + hook, 1) if future in text else hook + text
open(dst, "w").write(text)
PY
  done
fi

if ! (cd / && "$venv/bin/python" -c "import ezipc_proto, sys; sys.exit(not ezipc_proto.__file__.startswith('$project/'))") 2>/dev/null; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$project"
fi

args=("$@")
has() { local a; for a in "${args[@]}"; do [ "$a" = "$1" ] && return 0; done; return 1; }
has --impl || args+=(--impl floor_stdlib,floor_msgspec,sansio,pylsp,mcp_sdk,vscode,ezipc,ezipc_fast)
has --bench || has --table || args+=(--bench decode,encode)
if has --full; then
  kept=(); for a in "${args[@]}"; do [ "$a" = --full ] || kept+=("$a"); done; args=("${kept[@]}")
elif ! has --quick && ! has --table; then
  args+=(--quick)
fi
has --out || has --table || args+=(--out "$dir/results.jsonl")

cd "$dir"
echo "harness copy: $dir" >&2
python3 run.py "${args[@]}"
