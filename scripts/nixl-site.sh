# Sourced by GPU scripts: unpacks the NIXL archive of
# scripts/fetch-nixl-cu13.sh (NIXL_ARCHIVE, default
# .whl/nixl-cu13-1.5.1-min.tar.xz) into /tmp/nixl and points kvxfer at its
# NIXL C API and its UCX (KVXFER_NIXL_LIB, KVXFER_UCX_LIB), with PyTorch's
# CUDA 13 runtime (the machine's python3) on the loader's path.
SITE=/tmp/nixl
mkdir -p "$SITE" && tar -C "$SITE" -xJf "${NIXL_ARCHIVE:-.whl/nixl-cu13-1.5.1-min.tar.xz}" || exit 1
CUDART=$(dirname "$(python3 -c "import glob, site; print(sorted(glob.glob(site.getsitepackages()[0] + '/nvidia/**/libcudart.so.13', recursive=True))[0])")")
export LD_LIBRARY_PATH=$SITE/extra:$CUDART:${LD_LIBRARY_PATH:-}
export KVXFER_NIXL_LIB=$SITE/.nixl_cu13.mesonpy.libs/libnixl_capi.so
KVXFER_UCX_LIB=$(ls "$SITE"/nixl_cu13.libs/libucp-*.so* | head -1)
export KVXFER_UCX_LIB
