#!/usr/bin/env bash
# Fetches a CUDA-enabled UCX (the RAPIDS libucx-cu13 wheel from PyPI: UCX 1.22
# with cuda_copy, cuda_ipc and ucx_perftest's CUDA support) and unpacks the
# parts kvxfer and ucx_perftest need into DEST (default .cache/ucx-cu13):
#   DEST/libucx/lib/libucp.so.0   -> kvxfer --ucx-lib DEST/libucx/lib/libucp.so.0
#   DEST/libucx/bin/ucx_perftest  -> LD_LIBRARY_PATH=DEST/libucx/lib
# Debian's libucx0 has no CUDA modules: ucp_mem_map refuses GPU memory.
# The wheel has no InfiniBand or EFA modules; on such clusters use their UCX.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${UCX_WHEEL_VERSION:-1.22.0}
dest=${1:-.cache/ucx-cu13}
wheels=.cache/wheels
mkdir -p "$wheels"
wheel=$(ls "$wheels"/libucx_cu13-"$version"-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  python3 -m pip download --no-deps --only-binary=:all: "libucx-cu13==$version" -d "$wheels" >&2
  wheel=$(ls "$wheels"/libucx_cu13-"$version"-*.whl | head -1)
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m zipfile -e "$wheel" "$tmp"
rm -rf "$dest"
mkdir -p "$dest/libucx/bin" "$dest/libucx/lib/ucx" "$dest/libucx/etc"
cp "$tmp"/libucx/bin/{ucx_perftest,ucx_info} "$dest/libucx/bin/"
cp -r "$tmp"/libucx/etc/ucx "$dest/libucx/etc/" 2>/dev/null || true
cp -r "$tmp"/libucx_cu13.libs "$dest/"
# The wheel stores each library three times (no symlinks in zips): keep the
# soname file and link the other names to it.
for lib in "$tmp"/libucx/lib/lib{ucp,uct,ucs,ucm,ucs_signal}.so.0 "$tmp"/libucx/lib/ucx/lib*.so.0; do
  rel=${lib#"$tmp"/}
  cp "$lib" "$dest/$rel"
  ln -sf "$(basename "$lib")" "$dest/${rel%.0}"
done
chmod +x "$dest"/libucx/bin/* "$dest"/libucx_cu13.libs/*
echo "UCX $version with CUDA in $dest ($(du -sh "$dest" | cut -f1)): --ucx-lib $dest/libucx/lib/libucp.so.0" >&2
