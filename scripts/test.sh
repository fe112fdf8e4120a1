#!/usr/bin/env bash
# The README's test command: installs the system packages the tests need
# (Debian/Ubuntu, as root or through sudo), then checks formatting and lints
# and runs every test. Fails on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# Packages the build and the tests need. The tests start real processes over
# real loopback sockets; the ucx tests load Debian's UCX (libucx0: tcp and
# shared memory on host memory), as kvxfer does, at run time; the ofi tests
# load Debian's libfabric (libfabric1: the tcp and shm providers) the same
# way; the launch tests start pairs with Open MPI's mpirun; the shaped-link
# test (tests/shaped.rs) joins two network namespaces with a veth pair and
# shapes it with tbf (iproute2: ip, tc).
# The optional `mpi` feature (rsmpi) builds against Open MPI's headers with
# bindgen, hence libopenmpi-dev, libclang-dev and clang (its builtin headers).
PACKAGES=(gcc libc6-dev iproute2 libucx0 libfabric1 openmpi-bin libopenmpi-dev libclang-dev clang)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# scripts/fetch-ofi-cuda.sh downloads a wheel with pip (Debian: python3-pip);
# scripts/build-wheel.sh and the wheel's test make virtual environments
# (Debian: python3-venv).
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo clippy --all-targets --locked --features mpi -- -D warnings
# The nixl tests load NVIDIA's NIXL from PyPI's nixl-cu13 wheel (its C
# API, libnixl and the UCX backend with its own UCX), host memory only.
KVXFER_NIXL_LIB="$(scripts/fetch-nixl.sh)"
export KVXFER_NIXL_LIB
cargo test --locked
# The ofi tests again over libfabric 2.x (2.3.0 from PyPI's nixl wheel):
# kvxfer drives 1.17 to 2.x, and both must move every byte.
scripts/fetch-ofi-cuda.sh >/dev/null
KVXFER_OFI_LIB="$PWD/.cache/ofi-cuda/libfabric.so.1" cargo test --locked --test ofi
# With MPI bootstrapping: mpirun finds the rendezvous by itself.
cargo test --locked --features mpi --test launch
# The wheel (scripts/build-wheel.sh), installed into a fresh virtual
# environment and run from there with no Rust on the PATH.
wheel=$(scripts/build-wheel.sh .cache/wheel-dist | tail -1)
venv=$(mktemp -d)
python3 -m venv "$venv"
"$venv/bin/pip" install -q "$wheel"
env -i PATH="$venv/bin:/usr/bin:/bin" HOME="$venv" VENV="$venv" sh -c '
    set -e
    ! command -v cargo >/dev/null
    [ "$(command -v kvxfer)" = "$VENV/bin/kvxfer" ]
    kvxfer --version
    kvxfer pair -p 128 -n 2
    kvxfer doctor
    kvxfer-recv --version && kvxfer-send --version
'
rm -rf "$venv"
