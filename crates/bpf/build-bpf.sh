#!/usr/bin/env bash
# Compiles baton's eBPF programs into crates/bpf/baton.bpf.o, the object that is committed and
# embedded in the agent (a machine with only cargo builds baton without clang).
# Deterministic: no absolute paths in the object, so CI can rebuild and compare bytes
# (`build-bpf.sh --check` exits non-zero when the committed object differs from its source).
set -euo pipefail
cd "$(dirname "$0")"
out=baton.bpf.o
check=0
[ "${1:-}" = "--check" ] && check=1 && out=$(mktemp --suffix=.bpf.o)
arch_inc=/usr/include/$(uname -m)-linux-gnu
clang -O2 -g -target bpf -mcpu=v3 -Wall -Werror -I"$arch_inc" -fdebug-prefix-map="$PWD"=. \
    -c c/baton.c -o "$out"
llvm-strip -g "$out"  # keep BTF (maps need it), drop DWARF
if [ $check = 1 ]; then
    if ! cmp -s "$out" baton.bpf.o; then
        echo "crates/bpf/baton.bpf.o is stale: run crates/bpf/build-bpf.sh and commit the result" >&2
        rm -f "$out"; exit 1
    fi
    rm -f "$out"; echo "baton.bpf.o matches its source"
fi
