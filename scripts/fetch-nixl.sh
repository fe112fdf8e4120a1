#!/usr/bin/env bash
# Fetches NVIDIA's NIXL (the nixl-cu13 wheel from PyPI, 58 MB) and unpacks
# the parts `-t nixl` loads into DEST (default .cache/nixl-cu13-VERSION):
# its C API (libnixl_capi.so), libnixl, the backend plugins and the
# libraries they bundle (NIXL's own UCX among them), with the wheel's
# dist-info so that kvxfer names the version. Prints the library's path:
#   kvxfer ... -t nixl --nixl-lib "$(scripts/fetch-nixl.sh)"
# Only the libraries are used, by any Python or none. Its UCX backend moves
# host memory on a machine without a GPU; the LIBFABRIC and GPU backends
# need CUDA (see scripts/fetch-nixl-cu13.sh for a GPU machine's carry).
set -euo pipefail
cd "$(dirname "$0")/.."
version=${NIXL_CU13_VERSION:-1.5.1}
dest=${1:-.cache/nixl-cu13-$version}
lib="$dest/.nixl_cu13.mesonpy.libs/libnixl_capi.so"
if [ -f "$lib" ]; then
  echo "$PWD/$lib"
  exit 0
fi
wheels=.cache/wheels
mkdir -p "$wheels"
wheel=$(ls "$wheels"/nixl_cu13-"$version"-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 "nixl-cu13==$version" -d "$wheels" >&2
  wheel=$(ls "$wheels"/nixl_cu13-"$version"-*.whl | head -1)
fi
tmp="$dest.partial"
rm -rf "$tmp"
mkdir -p "$tmp"
# The libraries keep the wheel's layout: their RPATHs ($ORIGIN/../nixl_cu13.libs)
# and NIXL's plugin folder (plugins/ beside libnixl.so) depend on it.
python3 - "$wheel" "$tmp" <<'PY'
import os, stat, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
keep = (".nixl_cu13.mesonpy.libs/", "nixl_cu13.libs/", "nixl_cu13-")
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.filename.startswith(keep) and not info.is_dir():
            z.extract(info, dest)
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(os.path.join(dest, info.filename), mode or 0o644)
PY
test -f "$tmp/.nixl_cu13.mesonpy.libs/libnixl_capi.so" || { echo "$wheel: no libnixl_capi.so" >&2; exit 1; }
rm -rf "$dest"
mv "$tmp" "$dest"
echo "$PWD/$lib"
