#!/usr/bin/env python3
"""NIXL moving exactly the blocks kvxfer's `-g block` moves: the anchor for
kvxfer's block mode. Two processes, each with a GPU buffer laid out as
kvxfer's (its pool), registered with NIXL; the initiator reads (READ, as
vLLM's NixlConnector pulls on the decode side) or writes (WRITE) one
descriptor per (layer, K/V, block), at the offsets `kvxfer plan --json`
gives for each side, through a prepped transfer that NIXL merges where
descriptors are adjacent (make_prepped_xfer), as NixlConnector does.

    nixl_anchor.py target    --plan PLAN.json --point K --port P [--backend UCX]
    nixl_anchor.py initiator --plan PLAN.json --point K --port P --op READ|WRITE
                             [--backend UCX] [--iterations 20] [--warmup 3]

The initiator prints one JSON line: per request, the time of transfer()
until DONE with a handle made once ("transfer"), and of
make_prepped_xfer + transfer ("make+transfer", NixlConnector's per-request
path), median and mean in microseconds and GB/s (1e9 bytes/s) of the
median; the descriptors NIXL was given and the bytes checked.

Needs NIXL (nixl-cu13, or nixl), PyTorch with CUDA; both processes use
the first visible GPU.
"""
import argparse
import json
import socket
import struct
import sys
import time

import numpy as np
import torch

try:  # the CUDA 13 build of NIXL (nixl-cu13), else nixl
    from nixl_cu13 import nixl_agent, nixl_agent_config
except ImportError:
    from nixl._api import nixl_agent, nixl_agent_config


def send_blob(sock, data):
    sock.sendall(struct.pack("<Q", len(data)) + data)


def recv_blob(sock):
    head = b""
    while len(head) < 8:
        head += sock.recv(8 - len(head))
    n = struct.unpack("<Q", head)[0]
    data = b""
    while len(data) < n:
        data += sock.recv(n - len(data))
    return data


def checksum(buf, offsets, msg_bytes):
    """An order-sensitive sum of the messages at `offsets`: a block in the
    wrong place or missing changes it."""
    slots = buf.view(-1, msg_bytes)[torch.tensor(offsets, device=buf.device) // msg_bytes]
    words = slots.view(torch.int64).sum(dim=1)
    weights = torch.arange(1, len(offsets) + 1, device=buf.device, dtype=torch.int64)
    return int((words * weights).sum().item())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["target", "initiator"])
    ap.add_argument("--plan", required=True)
    ap.add_argument("--point", type=int, default=0)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--op", choices=["READ", "WRITE"], default="READ")
    ap.add_argument("--backend", default="UCX")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()

    point = json.load(open(a.plan))["points"][a.point]
    assert point["granularity"] == "block", "a block point of `kvxfer plan --json`"
    msg = point["message_bytes"]
    # READ: the initiator is the decode side (kvxfer's receiver); WRITE: the prefill side.
    decode_initiates = a.op == "READ"
    me_is_receiver = (a.role == "initiator") == decode_initiates
    mine = point["receiver_offsets" if me_is_receiver else "sender_offsets"]
    theirs = point["sender_offsets" if me_is_receiver else "receiver_offsets"]
    buf = torch.zeros(point["buffer_bytes"], dtype=torch.uint8, device="cuda")
    if not me_is_receiver:
        gen = torch.Generator(device="cuda").manual_seed(1)
        buf.copy_(torch.randint(0, 256, buf.shape, dtype=torch.uint8, device="cuda", generator=gen))
    torch.cuda.synchronize()

    agent = nixl_agent(a.role, nixl_agent_config(backends=[a.backend]))
    if a.backend not in agent.backends:
        sys.exit(f"NIXL backend {a.backend} did not load (plugins: {agent.plugin_list})")
    agent.register_memory(buf)
    dev = buf.get_device()

    if a.role == "target":
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", a.port))
        srv.listen(1)
        print("listening", flush=True)
        conn, _ = srv.accept()
    else:
        conn = socket.socket()
        for _ in range(300):
            try:
                conn.connect(("127.0.0.1", a.port))
                break
            except ConnectionRefusedError:
                time.sleep(0.1)
    send_blob(conn, agent.get_agent_metadata())
    send_blob(conn, struct.pack("<Q", buf.data_ptr()))
    peer = agent.add_remote_agent(recv_blob(conn))
    peer_base = struct.unpack("<Q", recv_blob(conn))[0]

    if a.role == "target":
        # Wait for the initiator to finish, then report what this side holds.
        recv_blob(conn)
        torch.cuda.synchronize()
        send_blob(conn, json.dumps({"checksum": checksum(buf, mine, msg)}).encode())
        return

    n = len(mine)
    local = np.stack([buf.data_ptr() + np.array(mine, dtype=np.uint64), np.full(n, msg, np.uint64),
                      np.full(n, dev, np.uint64)], axis=1)
    remote = np.stack([peer_base + np.array(theirs, dtype=np.uint64), np.full(n, msg, np.uint64),
                       np.full(n, dev, np.uint64)], axis=1)
    local_side = agent.prep_xfer_dlist("NIXL_INIT_AGENT", local, "VRAM")
    remote_side = agent.prep_xfer_dlist(peer, remote, "VRAM")
    indices = np.arange(n, dtype=np.int32)

    def run_once(handle):
        state = agent.transfer(handle)
        while state == "PROC":
            state = agent.check_xfer_state(handle)
        if state != "DONE":
            sys.exit(f"NIXL transfer ended {state}")

    # "transfer": one handle, posted again for each request.
    handle = agent.make_prepped_xfer(a.op, local_side, indices, remote_side, indices)
    times = []
    for it in range(a.warmup + a.iterations):
        t0 = time.perf_counter_ns()
        run_once(handle)
        if it >= a.warmup:
            times.append(time.perf_counter_ns() - t0)
    handle.release()
    # "make+transfer": a handle made for each request, as NixlConnector does.
    made = []
    for it in range(a.warmup + a.iterations):
        t0 = time.perf_counter_ns()
        h = agent.make_prepped_xfer(a.op, local_side, indices, remote_side, indices)
        run_once(h)
        if it >= a.warmup:
            made.append(time.perf_counter_ns() - t0)
        h.release()
    torch.cuda.synchronize()
    send_blob(conn, b"done")
    target = json.loads(recv_blob(conn))
    here = checksum(buf, mine, msg)
    # The receiver's blocks must equal the sender's, in order.
    sent, received = (target["checksum"], here) if decode_initiates else (here, target["checksum"])
    total = n * msg

    def summary(ns):
        ns = sorted(ns)
        med = ns[len(ns) // 2]
        return {"median_us": med / 1e3, "mean_us": sum(ns) / len(ns) / 1e3, "gbps": total / med}

    print(json.dumps({
        "nixl_backend": a.backend,
        "op": a.op,
        "tokens": point["tokens"],
        "descriptors_given": n,
        "request_bytes": total,
        "transfer": summary(times),
        "make+transfer": summary(made),
        "iterations": a.iterations,
        "bytes_match": sent == received,
    }), flush=True)
    if sent != received:
        sys.exit("the receiver's blocks differ from the sender's")


if __name__ == "__main__":
    main()
