#!/usr/bin/env bash
# Builds the wheel that carries kvxfer, kvxfer-send and kvxfer-recv
# (pyproject.toml: maturin, bindings = "bin", the stripped `dist` profile)
# into DIR (default dist/). maturin and zig come from PyPI into a virtual
# environment under .cache; zig links against glibc 2.28, so the wheel is
# manylinux_2_28 (RHEL 8, Ubuntu 20.04 and later) whatever this machine's
# glibc. Built, not published: install it with pip install DIR/kvxfer-*.whl.
#
#   scripts/build-wheel.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist}
venv=.cache/wheel-build
if [ ! -x "$venv/bin/maturin" ] || [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "maturin==1.16.0" "ziglang==0.17.1"
fi
# maturin finds zig through the ziglang module of the Python on PATH.
PATH="$PWD/$venv/bin:$PATH" maturin build --zig --compatibility manylinux_2_28 --out "$out" >&2
ls "$out"/kvxfer-*-manylinux_2_28_x86_64.whl
