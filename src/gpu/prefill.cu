// One layer of emulated prefill (src/gpu/prefill.rs): a fixed amount of
// tensor-core math and memory traffic on every multiprocessor, so that what
// a transfer takes from the GPU (multiprocessors, memory bandwidth) makes it
// slower, as it makes a real prefill slower.
//
// Each round, every warp issues 32 bf16 tensor-core products
// (mma.sync m16n8k16, fp32 accumulate: 4096 FLOPs each, four independent
// chains) and every thread reads 16 bytes of a scratch buffer larger than
// L2: 256 FLOPs per byte read, near the ridge point of an H100 or H200
// (about 600 TFLOP/s of mma.sync over 3.3-4.8 TB/s), so both the tensor
// cores and HBM bound it. The loads feed an integer checksum, not the math,
// so their latency never stalls the products. Needs sm_80 or newer.
// Compiled to prefill.ptx by scripts/gen-ptx.sh.

typedef unsigned int u32;
typedef unsigned long long u64;

__device__ __forceinline__ void mma_bf16(float* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// `rounds` rounds per thread; `scratch` holds `vectors` 16-byte vectors.
// Writes to `sink` only when the results hit a value they never take, so
// the compiler keeps every load and product.
extern "C" __global__ void kvx_prefill_layer(const uint4* scratch, u64 vectors, u32 rounds, u32* sink) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    u64 at = ((u64)blockIdx.x * blockDim.x + threadIdx.x) % vectors;
    // Small bf16 operands (about 0.0078), so the sums stay finite.
    u32 a = 0x3c003c00u ^ (threadIdx.x & 7u);
    u32 b = 0x3c003c00u ^ (blockIdx.x & 7u);
    float acc[4][4] = {{0.f}};
    u32 check = 0;
    for (u32 r = 0; r < rounds; r++) {
        uint4 v = scratch[at];
        at += stride;
        if (at >= vectors) {
            at -= vectors;
        }
#pragma unroll
        for (int i = 0; i < 8; i++) {
#pragma unroll
            for (int c = 0; c < 4; c++) {
                mma_bf16(acc[c], a, a, a, a, b, b);
            }
        }
        check ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    float total = 0.f;
    for (int c = 0; c < 4; c++) {
        total += acc[c][0] + acc[c][1] + acc[c][2] + acc[c][3];
    }
    if (check == 0x9e3779b9u && total == -1.f) {
        sink[0] = check;
    }
}
