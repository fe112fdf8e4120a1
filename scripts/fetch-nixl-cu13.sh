#!/usr/bin/env bash
# Packs the parts of NVIDIA's NIXL that scripts/gpu-nixl.sh and
# scripts/gpu-nixl-transport.sh need into one small archive, DEST (default
# .whl/nixl-cu13-1.5.1-min.tar.xz), which fits a GPU machine's 64 MiB carry
# where the 59 MB nixl-cu13 wheel does not: its Python package, libnixl and
# its C API (with the wheel's METADATA, for the version), the UCX and
# LIBFABRIC plugins and every library they load (the UCX inside, with its
# CUDA modules), found by following
# NEEDED entries. Plus Debian's libhwloc.so.15 (the LIBFABRIC plugin needs
# it; the wheel does not bundle it) in extra/. nixl 0.6.1's own UCX (1.19)
# cannot handle CUDA 13 (it asserts in ucp_mm on GPU memory), hence cu13.
#
#   scripts/fetch-nixl-cu13.sh [DEST]
set -euo pipefail
cd "$(dirname "$0")/.."
version=${NIXL_CU13_VERSION:-1.5.1}
dest=${1:-.whl/nixl-cu13-$version-min.tar.xz}
wheels=.cache/wheels
mkdir -p "$wheels" "$(dirname "$dest")"
wheel=$(ls "$wheels"/nixl_cu13-"$version"-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 "nixl-cu13==$version" -d "$wheels" >&2
  wheel=$(ls "$wheels"/nixl_cu13-"$version"-*.whl | head -1)
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m zipfile -e "$wheel" "$tmp/w"
(cd "$tmp" && apt-get download libhwloc15 >/dev/null 2>&1 && dpkg -x libhwloc15_*.deb hwloc)
mkdir -p "$tmp/w/extra"
cp -P "$tmp"/hwloc/usr/lib/x86_64-linux-gnu/libhwloc.so.15* "$tmp/w/extra/"
python3 - "$tmp/w" >"$tmp/files" <<'EOF'
import os, re, subprocess, sys
root = sys.argv[1]
by_name = {}
for d, _, files in os.walk(root):
    for f in files:
        if ".so" in f:
            by_name.setdefault(f, os.path.join(d, f))
def needed(path):
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True).stdout
    return re.findall(r"NEEDED.*\[(.*)\]", out)
start = [os.path.join(root, "nixl_cu13", f) for f in os.listdir(os.path.join(root, "nixl_cu13"))]
plugins = os.path.join(root, ".nixl_cu13.mesonpy.libs", "plugins")
start += [os.path.join(plugins, f"libplugin_{p}.so") for p in ("UCX", "LIBFABRIC")]
# kvxfer's -t nixl loads the C API; the dist-info tells it the version.
start.append(os.path.join(root, ".nixl_cu13.mesonpy.libs", "libnixl_capi.so"))
info = [d for d in os.listdir(root) if d.endswith(".dist-info")][0]
start.append(os.path.join(root, info, "METADATA"))
ucx = os.path.join(root, "nixl_cu13.libs", "ucx")
start += [os.path.join(ucx, f) for f in os.listdir(ucx) if re.match(r"lib(uct_cuda|ucm_cuda|uct_cma)\.so\.0\.0\.0$", f)]
start += [os.path.join(root, "extra", f) for f in os.listdir(os.path.join(root, "extra"))]
keep, todo = set(), list(start)
while todo:
    p = todo.pop()
    if p in keep:
        continue
    keep.add(p)
    if p.endswith(".so") or ".so." in p:
        todo += [by_name[n] for n in needed(p) if n in by_name]
for p in sorted(keep):
    print(os.path.relpath(p, root))
EOF
tar -C "$tmp/w" -cf - -T "$tmp/files" | xz -9 -T2 >"$dest"
echo "NIXL $version (UCX and LIBFABRIC plugins) in $dest ($(du -h "$dest" | cut -f1), $(wc -l <"$tmp/files") files)" >&2
