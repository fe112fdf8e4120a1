// The integrity pattern of src/kv/pattern.rs, on the GPU: word i of a message
// whose seed is s is splitmix64(s ^ i * GOLDEN) | 0x0101..01. Each message's
// seed comes from the host (it hashes the message's key), and so do its
// place in the buffer (byte offset; blocks sit where a block table puts
// them) and the word of its pattern it starts at (a conversation's later
// turn continues the pattern of its tokens' positions). Messages must be a
// whole number of 8-byte words. Compiled to pattern.ptx by scripts/gen-ptx.sh.

typedef unsigned long long u64;

#define GOLDEN 0x9E3779B97F4A7C15ULL
#define NONZERO 0x0101010101010101ULL

__device__ __forceinline__ u64 splitmix64(u64 z) {
    z += GOLDEN;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

__device__ __forceinline__ u64 word(u64 seed, u64 i) {
    return splitmix64(seed ^ (i * GOLDEN)) | NONZERO;
}

// Writes the pattern over the request's `words` words, `message_words` per
// message, message m at byte `offsets[m]` of `buf` from word `starts[m]` of
// its pattern.
extern "C" __global__ void kvx_fill(u64* buf, const u64* seeds, const u64* offsets, const u64* starts,
                                    u64 message_words, u64 words) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 w = (u64)blockIdx.x * blockDim.x + threadIdx.x; w < words; w += stride) {
        u64 m = w / message_words;
        u64 j = w - m * message_words;
        buf[offsets[m] / 8 + j] = word(seeds[m], starts[m] + j);
    }
}

// Adds the number of wrong bytes to *wrong and lowers *first to the first
// wrong byte, counted in the request (its messages in order; both zero /
// all ones beforehand).
extern "C" __global__ void kvx_verify(const u64* buf, const u64* seeds, const u64* offsets, const u64* starts,
                                      u64 message_words, u64 words, u64* wrong, u64* first) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    u64 mine = 0;
    for (u64 w = (u64)blockIdx.x * blockDim.x + threadIdx.x; w < words; w += stride) {
        u64 m = w / message_words;
        u64 j = w - m * message_words;
        u64 diff = buf[offsets[m] / 8 + j] ^ word(seeds[m], starts[m] + j);
        if (diff != 0) {
            for (int b = 0; b < 8; b++) {
                mine += ((diff >> (8 * b)) & 0xff) != 0;
            }
            // Little endian: the lowest differing byte comes first in memory.
            atomicMin(first, w * 8 + (u64)((__ffsll((long long)diff) - 1) / 8));
        }
    }
    if (mine != 0) {
        atomicAdd(wrong, mine);
    }
}
