#!/usr/bin/env bash
# Fetches a libfabric 2.x built with CUDA (FI_HMEM) and unpacks it into DEST
# (default .cache/ofi-cuda), as scripts/fetch-ucx-cuda.sh does for UCX:
#   DEST/libfabric.so.1  -> kvxfer --ofi-lib DEST/libfabric.so.1
# Where it comes from: NVIDIA's NIXL wheel on PyPI (nixl==0.6.1, 23 MB; the
# only registry package found that holds a CUDA-enabled libfabric), which
# bundles libfabric 2.3.0 for its LIBFABRIC backend with the rdma-core
# libraries it needs (libefa, libibverbs, libnl-3, libnl-route-3). It finds
# CUDA at run time (libcuda.so.1), so it also loads where there is no GPU.
# On AWS use the EFA installer's libfabric (/opt/amazon/efa/lib), whatever
# its version: it is the one built for that fabric.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${NIXL_WHEEL_VERSION:-0.6.1}
dest=${1:-.cache/ofi-cuda}
wheels=.cache/wheels
mkdir -p "$wheels"
wheel=$(ls "$wheels"/nixl-"$version"-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  # The wheel is for CPython 3.12; only its libraries are used, by any Python.
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 "nixl==$version" -d "$wheels" >&2
  wheel=$(ls "$wheels"/nixl-"$version"-*.whl | head -1)
fi
rm -rf "$dest"
mkdir -p "$dest"
# The libraries keep their hashed names (their RUNPATH is $ORIGIN and they
# name each other so); libfabric.so.1 is the name kvxfer is given.
python3 - "$wheel" "$dest" <<'EOF'
import re, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
wanted = re.compile(r"nixl\.libs/(libfabric|libefa|libibverbs|libnl-3|libnl-route-3)-[0-9a-f]+\.so[.0-9]*$")
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if wanted.match(n)]
    if len(names) != 5:
        sys.exit(f"{wheel}: expected 5 libraries, found {names}")
    for n in names:
        with open(f"{dest}/{n.split('/')[-1]}", "wb") as out:
            out.write(z.read(n))
EOF
chmod +x "$dest"/*.so*
ln -sf "$(cd "$dest" && ls libfabric-*.so*)" "$dest/libfabric.so.1"
echo "libfabric from nixl $version in $dest ($(du -sh "$dest" | cut -f1)): --ofi-lib $dest/libfabric.so.1" >&2
