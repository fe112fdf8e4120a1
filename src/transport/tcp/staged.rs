//! tcp on GPU memory: the request travels through a ring of pinned host
//! slots, CHUNK bytes each. The sender copies chunk c+DEPTH off the GPU while
//! chunk c goes into the socket; the receiver reads chunk c from the socket
//! while earlier chunks are copied onto the GPU. Messages keep their headers
//! and may straddle chunks; one connection carries them in order.

use super::{data_error, expect_header, header, read_full, write_all_vectored, Round, HEADER};
use crate::error::Result;
use crate::gpu::{self, DeviceMem, Event, PinnedMem, Stream};
use crate::plan::{RequestLayout, Side};
use crate::transport::{nanos, Completions};
use std::io::{BufReader, IoSlice};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

/// Bytes per staging slot, and slots in the ring: 16 MiB pinned per side.
pub const CHUNK: usize = 4 << 20;
const DEPTH: usize = 4;

struct Slot {
    mem: PinnedMem,
    /// Done when the slot's last copy (to or from the GPU) is.
    copied: Event,
}

pub struct Staging {
    stream: Stream,
    slots: Vec<Slot>,
}

impl Staging {
    pub fn new(device: &Arc<gpu::Device>) -> Result<Staging> {
        let slots = (0..DEPTH)
            .map(|_| Ok(Slot { mem: PinnedMem::new(device, CHUNK)?, copied: Event::new(device)? }))
            .collect::<Result<_>>()?;
        Ok(Staging { stream: Stream::new(device)?, slots })
    }

    pub fn describe() -> String {
        format!("staged through {DEPTH} pinned slots of {} MiB", CHUNK >> 20)
    }
}

/// Byte range of chunk `c` of a request of `total` bytes.
fn chunk(c: usize, total: usize) -> (usize, usize) {
    (c * CHUNK, ((c + 1) * CHUNK).min(total))
}

/// Where bytes `start..end` of the request (its messages in order) sit in
/// `side`'s buffer: (buffer offset, offset in the range, length), one piece
/// where the messages tile the buffer, else one per message touched.
fn pieces(layout: &RequestLayout, side: Side, start: usize, end: usize) -> Vec<(usize, usize, usize)> {
    if layout.tiled() {
        return vec![(start, 0, end - start)];
    }
    let mut out: Vec<(usize, usize, usize)> = Vec::new();
    let mut i = layout.message_at(start);
    while i < layout.message_count && layout.message_start(i) < end {
        let (from, len) = (layout.message_start(i), layout.message_len(i));
        let (lo, hi) = (from.max(start), (from + len).min(end));
        let at = layout.slot(side, i).offset + (lo - from);
        i += 1;
        if lo >= hi {
            continue;
        }
        match out.last_mut() {
            Some(p) if p.0 + p.2 == at => p.2 += hi - lo,
            _ => out.push((at, lo - start, hi - lo)),
        }
    }
    out
}

pub(super) fn send(sock: &mut TcpStream, mem: &DeviceMem, st: &mut Staging, round: Round) -> Result<()> {
    let Round { layout, request, deadline, timeout, ready } = round;
    let total = layout.total_bytes();
    let chunks = total.div_ceil(CHUNK);
    let copy_out = |st: &mut Staging, c: usize| -> Result<()> {
        let (start, end) = chunk(c, total);
        let slot = &mut st.slots[c % DEPTH];
        for (at, into, len) in pieces(layout, Side::Sender, start, end) {
            // SAFETY: the slot holds CHUNK bytes and is not read until `copied`.
            unsafe {
                gpu::copy_to_host_async(
                    slot.mem.as_mut_slice().as_mut_ptr().add(into),
                    mem.ptr + at as u64,
                    len,
                    &st.stream,
                )
            }?;
        }
        slot.copied.record(&st.stream)
    };
    // A chunk is copied off the GPU once the layers it holds are computed:
    // up to DEPTH ahead while they are, never holding back chunk c.
    let mut issued = 0;
    for c in 0..chunks {
        while issued < chunks.min(c + DEPTH) {
            let last_message = layout.message_at(chunk(issued, total).1 - 1);
            if issued > c && !ready.ready(last_message)? {
                break;
            }
            ready.wait(last_message, deadline)?;
            copy_out(st, issued)?;
            issued += 1;
        }
        let (start, end) = chunk(c, total);
        let slot = &st.slots[c % DEPTH];
        slot.copied.wait(deadline, "copying KV off the GPU for the socket")?;
        let data = &slot.mem.as_slice()[..end - start];
        // Messages overlapping this chunk; a header goes with a message's first byte.
        let messages = layout.message_at(start)..=layout.message_at(end - 1);
        let headers: Vec<Option<[u8; HEADER]>> = messages
            .clone()
            .map(|i| {
                let first_byte_here = layout.message_start(i) >= start;
                first_byte_here.then(|| header(&layout.key(request, i), layout.message_len(i)))
            })
            .collect();
        let mut iov = Vec::with_capacity(2 * headers.len());
        for (i, h) in messages.zip(&headers) {
            if let Some(h) = h {
                iov.push(IoSlice::new(h));
            }
            let (from, len) = (layout.message_start(i), layout.message_len(i));
            iov.push(IoSlice::new(&data[from.max(start) - start..(from + len).min(end) - start]));
        }
        write_all_vectored(sock, &mut iov, deadline, timeout).map_err(|e| {
            data_error(
                e,
                "receiver",
                timeout,
                &format!("sending bytes {start}..{end} of {}", crate::plan::Req(request)),
            )
        })?;
    }
    Ok(())
}

pub(super) fn recv(
    reader: &mut BufReader<TcpStream>,
    mem: &DeviceMem,
    st: &mut Staging,
    round: Round,
    done: &dyn Completions,
    mut started: Instant,
) -> Result<()> {
    let Round { layout, request, deadline, timeout, .. } = round;
    let total = layout.total_bytes();
    let mut pos = 0;
    for index in 0..layout.message_count {
        let what = || {
            format!(
                "waiting for message {index} of {} of {request_named}",
                layout.message_count,
                request_named = crate::plan::Req(request)
            )
        };
        expect_header(reader, index, round, &what)?;
        let message_end = pos + layout.message_len(index);
        while pos < message_end {
            let c = pos / CHUNK;
            let (start, end) = chunk(c, total);
            let slot = &mut st.slots[c % DEPTH];
            if pos == start && c >= DEPTH {
                // The slot's previous chunk must be on the GPU before it is reused.
                slot.copied.wait(deadline, "copying KV onto the GPU")?;
            }
            let upto = message_end.min(end);
            read_full(reader, &mut slot.mem.as_mut_slice()[pos - start..upto - start], deadline, timeout)
                .map_err(|e| data_error(e, "sender", timeout, &what()))?;
            pos = upto;
            if pos == end {
                for (at, from, len) in pieces(layout, Side::Receiver, start, end) {
                    // SAFETY: the slot is not written again until `copied` is done.
                    unsafe {
                        gpu::copy_to_device_async(
                            mem.ptr + at as u64,
                            slot.mem.as_slice().as_ptr().add(from),
                            len,
                            &st.stream,
                        )
                    }?;
                }
                slot.copied.record(&st.stream)?;
            }
        }
        // A message counts as arrived once in host memory; the request's time
        // also covers the last copies onto the GPU.
        let ended = Instant::now();
        done.message_done(index, nanos(ended - started), None)?;
        started = ended;
    }
    st.stream.wait(deadline, "copying KV onto the GPU")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_follow_each_sides_block_table() {
        let shape =
            crate::kv::KvShape::new(crate::kv::presets::lookup("llama-3.1-8b").unwrap(), 1, 16).unwrap();
        let tiled = crate::plan::RequestLayout::new(&shape, 64, crate::plan::Granularity::Block);
        assert_eq!(pieces(&tiled, Side::Sender, 100, 5000), vec![(100, 0, 4900)]);
        // 4 blocks of 32 KiB per tensor in pools of 6: K of layer 0 at 0..4,
        // V at 6..10 (pool blocks); a range across them splits at the gap.
        let pooled =
            crate::plan::RequestLayout::in_pool(&shape, 64, crate::plan::BlockTable::Contiguous, 6, true);
        let b = 32 << 10;
        assert_eq!(pieces(&pooled, Side::Sender, 3 * b, 5 * b + 7), vec![(3 * b, 0, b), (6 * b, b, b + 7)]);
    }

    #[test]
    fn chunks_tile_the_request() {
        let total = 2 * CHUNK + 5;
        assert_eq!(chunk(0, total), (0, CHUNK));
        assert_eq!(chunk(2, total), (2 * CHUNK, total));
        assert_eq!(total.div_ceil(CHUNK), 3);
    }
}
