//! Transport `tcp`: host memory over one or more TCP connections.
//!
//! Each message travels as a 32-byte header (its key and length) followed by
//! its bytes. The sender hands the kernel up to 512 messages per `writev`,
//! header and payload slices side by side, so small blocks cost no copy and
//! few system calls. The receiver reads headers through a small buffer and
//! large payloads straight into place. With `--streams N`, message i travels
//! on connection i mod N, each connection driven by its own thread.
//!
//! Data connections go to a port the receiver opens for this session and
//! announces over the control connection; each presents the session cookie.

mod staged;

use super::{
    key_mismatch, nanos, AtOnce, Completions, PeerLink, Ready, RecvSide, RoundTiming, SendSide, Setup,
    TransportInfo, TransportSpec,
};
use crate::error::{Error, Result};
use crate::memory::Buffer;
use crate::net;
use crate::net::is_timeout;
use crate::plan::{RequestLayout, Side, TransferKey};
use crate::units::fmt_bytes;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::io::{BufReader, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const HEADER: usize = 32;
/// A batch ends at this many messages (2 iovecs each; Linux allows 1024)...
const BATCH_MESSAGES: usize = 512;
/// ...or this many bytes, and no single writev carries more: on loopback,
/// 1-4 MiB writes ran 30-50% faster than one write of a whole large message
/// (the same holds for iperf3's -l), measured on the 2-core build machine.
const WRITE_BYTES: usize = 4 << 20;
/// Headers and small payloads are read through a buffer of this size;
/// anything at least this large goes straight into its slot.
const READ_BUFFER: usize = 64 << 10;

/// What every stream's share of one request needs to know.
#[derive(Clone, Copy)]
struct Round<'a> {
    layout: &'a RequestLayout,
    request: u64,
    deadline: Instant,
    /// The longest wait for a single read or write.
    timeout: Duration,
    /// When each message may go (the sender's emulated prefill).
    ready: &'a dyn Ready,
}

fn header(key: &TransferKey, len: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..TransferKey::WIRE_LEN].copy_from_slice(&key.to_wire());
    h[24..32].copy_from_slice(&(len as u64).to_le_bytes());
    h
}

fn parse_header(h: &[u8; HEADER]) -> Option<(TransferKey, u64)> {
    if h[20..24] != [0; 4] {
        return None;
    }
    let key = TransferKey::from_wire(h[..TransferKey::WIRE_LEN].try_into().unwrap())?;
    Some((key, u64::from_le_bytes(h[24..32].try_into().unwrap())))
}

/// Reads message `index`'s header and checks that it names the key and size
/// the plan expects there. `what` says what was awaited, for errors only.
fn expect_header(
    reader: &mut BufReader<TcpStream>,
    index: usize,
    round: Round,
    what: &dyn Fn() -> String,
) -> Result<()> {
    let Round { layout, request, deadline, timeout, .. } = round;
    let mut hdr = [0u8; HEADER];
    read_full(reader, &mut hdr, deadline, timeout).map_err(|e| data_error(e, "sender", timeout, &what()))?;
    let got = match parse_header(&hdr) {
        Some((key, len)) if key == layout.key(request, index) && len == layout.message_len(index) as u64 => {
            return Ok(())
        }
        Some((key, len)) => format!("{key} ({len} bytes)"),
        None => "bytes that are no kvxfer message header".to_string(),
    };
    Err(key_mismatch(index, layout, request, &got))
}

fn hello_bytes(cookie: u64, stream: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&cookie.to_le_bytes());
    b[8..].copy_from_slice(&stream.to_le_bytes());
    b
}

fn new_socket(addr: SocketAddr, buffer: Option<u64>) -> Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Set before connect/listen so the window scale is negotiated for them.
    if let Some(n) = buffer {
        sock.set_send_buffer_size(n as usize)?;
        sock.set_recv_buffer_size(n as usize)?;
    }
    sock.set_tcp_nodelay(true)?;
    Ok(sock)
}

pub struct TcpSender {
    streams: Vec<TcpStream>,
    timeout: Duration,
    info: TransportInfo,
    /// Pinned slots when the buffer is GPU memory.
    staging: Option<staged::Staging>,
}

/// GPU buffers go through pinned staging, over one connection.
fn staging_for(buf: &Buffer, spec: &TransportSpec) -> Result<Option<staged::Staging>> {
    let Some(device) = buf.gpu_mem().map(|m| &m.device) else { return Ok(None) };
    if spec.streams != 1 {
        return Err(Error::usage(
            "tcp on GPU memory stages through pinned memory over one stream: use --streams 1",
        ));
    }
    Ok(Some(staged::Staging::new(device)?))
}

impl TcpSender {
    pub fn connect(spec: &TransportSpec, mut setup: Setup, buf: &Buffer) -> Result<TcpSender> {
        let staging = staging_for(buf, spec)?;
        let offer = setup.recv("waiting for the receiver's tcp data port")?;
        let port = offer["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| Error::run(format!("protocol error: bad tcp setup from the receiver: {offer}")))?;
        let addr = SocketAddr::new(setup.ctrl.peer_addr().ip(), port);
        let timeout = setup.ctrl.timeout();
        let deadline = Instant::now() + timeout;
        let mut streams = Vec::new();
        for idx in 0..spec.streams {
            let sock = new_socket(addr, spec.socket_buffer)?;
            // The data leaves through the interface the control connection took.
            sock.bind(&SocketAddr::new(setup.ctrl.local_addr().ip(), 0).into())?;
            let left = net::remaining(deadline).unwrap_or(Duration::from_millis(1));
            sock.connect_timeout(&addr.into(), left)
                .map_err(|e| Error::run(format!("cannot open tcp data stream {idx} to {addr}: {e}")))?;
            let mut stream: TcpStream = sock.into();
            stream.set_write_timeout(Some(timeout))?;
            stream.write_all(&hello_bytes(setup.cookie, idx))?;
            tracing::debug!("tcp data stream {idx} connected to {addr}");
            streams.push(stream);
        }
        setup.recv("waiting for the receiver to accept the tcp data streams")?;
        let info = describe(&streams, spec, staging.is_some());
        Ok(TcpSender { streams, timeout, info, staging })
    }
}

impl SendSide for TcpSender {
    fn info(&self) -> TransportInfo {
        self.info.clone()
    }

    fn send(
        &mut self,
        buf: &Buffer,
        layout: &RequestLayout,
        request: u64,
        deadline: Instant,
        _peer: &mut dyn PeerLink,
        ready: &dyn Ready,
    ) -> Result<()> {
        let round = Round { layout, request, deadline, timeout: self.timeout, ready };
        let Some(host) = buf.host_slice() else {
            let mem = buf.gpu_mem().expect("GPU memory");
            let staging = self.staging.as_mut().expect("staging made for GPU memory");
            return staged::send(&mut self.streams[0], mem, staging, round);
        };
        let data = &host[..layout.buffer_bytes()];
        let step = self.streams.len();
        if step == 1 {
            return send_stream(&mut self.streams[0], 0, 1, data, round);
        }
        let wakers = wakers(self.streams.iter())?;
        let streams: Vec<&mut TcpStream> = self.streams.iter_mut().collect();
        on_threads(streams, |k, st| send_stream(st, k, step, data, round), || shutdown_all(&wakers))
    }
}

/// Sends messages first, first+step, ... of the request on one stream.
fn send_stream(stream: &mut TcpStream, first: usize, step: usize, data: &[u8], round: Round) -> Result<()> {
    let Round { layout, request, deadline, timeout, ready } = round;
    let mut headers: Vec<[u8; HEADER]> = Vec::with_capacity(BATCH_MESSAGES);
    let mut batch: Vec<usize> = Vec::with_capacity(BATCH_MESSAGES);
    let mut batch_bytes = 0;
    let mut index = first;
    while index < layout.message_count {
        ready.wait(index, deadline)?;
        headers.push(header(&layout.key(request, index), layout.message_len(index)));
        batch.push(index);
        batch_bytes += HEADER + layout.message_len(index);
        index += step;
        // A batch also ends where the next message is not computed yet.
        if batch.len() == BATCH_MESSAGES
            || batch_bytes >= WRITE_BYTES
            || index >= layout.message_count
            || !ready.ready(index)?
        {
            let mut iov: Vec<IoSlice> = Vec::with_capacity(2 * batch.len());
            for (h, &m) in headers.iter().zip(&batch) {
                let slot = layout.slot(Side::Sender, m);
                iov.push(IoSlice::new(h));
                iov.push(IoSlice::new(&data[slot.offset..slot.offset + slot.len]));
            }
            write_all_vectored(stream, &mut iov, deadline, timeout).map_err(|e| {
                let what = format!(
                    "sending message {} of {} of {request_named} on tcp stream {first}",
                    batch[0],
                    layout.message_count,
                    request_named = crate::plan::Req(request)
                );
                data_error(e, "receiver", timeout, &what)
            })?;
            headers.clear();
            batch.clear();
            batch_bytes = 0;
        }
    }
    Ok(())
}

/// Runs one blocking socket call (`call`) with the socket's timeout, set by
/// `set`, cut to what is left before `deadline` where that is less than
/// its usual `timeout`: a link that trickles a few bytes per timeout would
/// otherwise hold a round past its deadline by up to one more timeout.
/// Far from the deadline (always, on a working link) it costs no syscall.
fn before_deadline<S, T>(
    sock: &mut S,
    (deadline, timeout): (Instant, Duration),
    set: fn(&S, Option<Duration>) -> std::io::Result<()>,
    call: impl FnOnce(&mut S) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left >= timeout {
        return call(sock);
    }
    if left.is_zero() {
        return Err(deadline_passed());
    }
    set(sock, Some(left))?;
    let result = call(sock);
    set(sock, Some(timeout))?;
    match result {
        Err(e) if is_timeout(&e) => Err(deadline_passed()),
        r => r,
    }
}

/// Writes every slice, at most WRITE_BYTES per system call.
fn write_all_vectored(
    stream: &mut TcpStream,
    mut bufs: &mut [IoSlice],
    deadline: Instant,
    timeout: Duration,
) -> std::io::Result<()> {
    let mut pace = Pace::new(deadline, timeout);
    let (mut handed, mut delivered_then) = (0usize, 0usize);
    while !bufs.is_empty() {
        interruption()?;
        let deadline = pace.deadline();
        let (mut count, mut bytes) = (0, 0);
        while count < bufs.len() && bytes + bufs[count].len() <= WRITE_BYTES {
            bytes += bufs[count].len();
            count += 1;
        }
        let written = before_deadline(stream, (deadline, timeout), TcpStream::set_write_timeout, |stream| {
            if count == 0 {
                // The next slice alone is larger than one write: send a piece of it.
                let first: &[u8] = &bufs[0];
                stream.write(&first[..WRITE_BYTES])
            } else {
                stream.write_vectored(&bufs[..count])
            }
        });
        match written {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                IoSlice::advance_slices(&mut bufs, n);
                handed += n;
                // Bytes that went into the socket's send buffer have not
                // crossed the link: progress is what left it.
                if handed - delivered_then >= WRITE_BYTES {
                    let delivered = handed.saturating_sub(unsent_bytes(stream));
                    pace.moved(delivered.saturating_sub(delivered_then));
                    delivered_then = delivered.max(delivered_then);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if Instant::now() > deadline {
            return Err(deadline_passed());
        }
    }
    Ok(())
}

pub struct TcpReceiver {
    streams: Vec<BufReader<TcpStream>>,
    timeout: Duration,
    info: TransportInfo,
    staging: Option<staged::Staging>,
}

impl TcpReceiver {
    pub fn accept(spec: &TransportSpec, mut setup: Setup, buf: &Buffer) -> Result<TcpReceiver> {
        let staging = staging_for(buf, spec)?;
        let local = SocketAddr::new(setup.ctrl.local_addr().ip(), 0);
        let sock = new_socket(local, spec.socket_buffer)?;
        sock.set_reuse_address(true)?;
        sock.bind(&local.into())?;
        sock.listen(64)?;
        let listener: TcpListener = sock.into();
        let port = listener.local_addr()?.port();
        setup.send(serde_json::json!({ "port": port }))?;

        let timeout = setup.ctrl.timeout();
        let deadline = Instant::now() + timeout;
        let n = spec.streams as usize;
        let mut slots: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
        while slots.iter().any(Option::is_none) {
            // Watching the control connection: a sender that aborts (or is
            // interrupted) here is heard at once.
            let mut watch = || setup.ctrl.watch("waiting for the sender's tcp data streams");
            let (mut s, from) = net::accept_watching(&listener, deadline, "sender data stream", &mut watch)?;
            s.set_read_timeout(Some(timeout))?;
            let mut hello = [0u8; 12];
            let ok = s.read_exact(&mut hello).is_ok()
                && u64::from_le_bytes(hello[..8].try_into().unwrap()) == setup.cookie;
            let idx = u32::from_le_bytes(hello[8..].try_into().unwrap()) as usize;
            match slots.get_mut(idx) {
                Some(slot @ None) if ok => {
                    tracing::debug!("tcp data stream {idx} accepted from {from}");
                    *slot = Some(s)
                }
                _ => eprintln!("kvxfer-recv: ignoring a stray data connection from {from}"),
            }
        }
        let streams: Vec<TcpStream> = slots.into_iter().map(Option::unwrap).collect();
        setup.send(serde_json::json!({ "accepted": n }))?;
        let info = describe(&streams, spec, staging.is_some());
        Ok(TcpReceiver {
            streams: streams.into_iter().map(|s| BufReader::with_capacity(READ_BUFFER, s)).collect(),
            timeout,
            info,
            staging,
        })
    }
}

impl RecvSide for TcpReceiver {
    fn info(&self) -> TransportInfo {
        self.info.clone()
    }

    fn recv(
        &mut self,
        buf: &mut Buffer,
        layout: &RequestLayout,
        request: u64,
        deadline: Instant,
        peer: &mut dyn PeerLink,
        done: &dyn Completions,
    ) -> Result<RoundTiming> {
        // Sockets fail or time out on their own: no heartbeat is needed here.
        let round = Round { layout, request, deadline, timeout: self.timeout, ready: &AtOnce };
        // The first message's wait begins when the sender is told to go; on a
        // busy host the woken sender may run before go() even returns.
        let start = Instant::now();
        if let Some(staging) = self.staging.as_mut() {
            let mem = buf.gpu_mem().expect("staging is made for GPU memory");
            peer.go()?;
            staged::recv(&mut self.streams[0], mem, staging, round, done, start)?;
            return Ok(RoundTiming::default());
        }
        let region = &mut buf.host_slice_mut().expect("host memory")[..layout.buffer_bytes()];
        let slots = layout.split_mut(Side::Receiver, region).into_iter();
        peer.go()?;
        if self.streams.len() == 1 {
            recv_stream(&mut self.streams[0], 0, slots, round, done, start)?;
            return Ok(RoundTiming::default());
        }
        let n = self.streams.len();
        let mut per_stream: Vec<Vec<(usize, &mut [u8])>> =
            (0..n).map(|_| Vec::with_capacity(layout.message_count / n + 1)).collect();
        for (i, slot) in slots {
            per_stream[i % n].push((i, slot));
        }
        let wakers = wakers(self.streams.iter().map(BufReader::get_ref))?;
        let work: Vec<_> = self.streams.iter_mut().zip(per_stream).collect();
        on_threads(
            work,
            |k, (st, mine)| recv_stream(st, k, mine.into_iter(), round, done, start),
            || shutdown_all(&wakers),
        )?;
        Ok(RoundTiming::default())
    }
}

/// Receives this stream's share of the round, checking every header.
fn recv_stream<'b>(
    reader: &mut BufReader<TcpStream>,
    stream: usize,
    slots: impl Iterator<Item = (usize, &'b mut [u8])>,
    round: Round,
    done: &dyn Completions,
    mut started: Instant,
) -> Result<()> {
    let Round { layout, request, deadline, timeout, .. } = round;
    for (index, dst) in slots {
        let what = || {
            format!(
                "waiting for message {index} of {} of {request_named} on tcp stream {stream}",
                layout.message_count,
                request_named = crate::plan::Req(request)
            )
        };
        expect_header(reader, index, round, &what)?;
        read_full(reader, dst, deadline, timeout).map_err(|e| data_error(e, "sender", timeout, &what()))?;
        let ended = Instant::now();
        done.message_done(index, nanos(ended - started), Some(dst))?;
        started = ended;
    }
    Ok(())
}

fn read_full(
    reader: &mut BufReader<TcpStream>,
    mut dst: &mut [u8],
    deadline: Instant,
    timeout: Duration,
) -> std::io::Result<()> {
    let mut pace = Pace::new(deadline, timeout);
    while !dst.is_empty() {
        interruption()?;
        let deadline = pace.deadline();
        let set = |r: &BufReader<TcpStream>, t| r.get_ref().set_read_timeout(t);
        match before_deadline(reader, (deadline, timeout), set, |r| r.read(dst)) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                dst = &mut dst[n..];
                pace.moved(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if Instant::now() > deadline {
            return Err(deadline_passed());
        }
    }
    Ok(())
}

/// Bytes written to `stream` that the kernel still holds unsent or
/// unacknowledged (SIOCOUTQ); 0 where it cannot tell.
fn unsent_bytes(stream: &TcpStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer, on our own socket.
    match unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) } {
        0 => n.max(0) as usize,
        _ => 0,
    }
}

/// How long the bytes of a round may take on one stream: every
/// WRITE_BYTES of them within the timeout plus 1 s per 10 MB (the rule of
/// the whole request's deadline, which also holds), so a link that
/// trickles a few bytes per timeout fails after about the timeout, not
/// after a multiple of it, however large the message.
struct Pace {
    request_deadline: Instant,
    timeout: Duration,
    piece_deadline: Instant,
    moved: usize,
}

impl Pace {
    fn new(request_deadline: Instant, timeout: Duration) -> Pace {
        let mut p = Pace { request_deadline, timeout, piece_deadline: Instant::now(), moved: 0 };
        p.next_piece();
        p
    }

    fn next_piece(&mut self) {
        let piece = Duration::from_secs_f64(WRITE_BYTES as f64 / super::SLOWEST_DATA_BYTES_PER_SEC);
        self.piece_deadline = Instant::now() + self.timeout + piece;
        self.moved = 0;
    }

    fn deadline(&self) -> Instant {
        self.request_deadline.min(self.piece_deadline)
    }

    fn moved(&mut self, n: usize) {
        self.moved += n;
        if self.moved >= WRITE_BYTES {
            self.next_piece();
        }
    }
}

/// An operator's signal, as an I/O error for the data loops (`data_error`
/// turns it back into `Error::interrupted`).
fn interruption() -> std::io::Result<()> {
    match crate::signals::received() {
        None => Ok(()),
        Some(_) => Err(std::io::ErrorKind::Interrupted.into()),
    }
}

/// Marks the one I/O error that is ours: the round ran out of time.
#[derive(Debug)]
struct DeadlinePassed;

impl std::fmt::Display for DeadlinePassed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("it took longer than the timeout plus 1 s per 10 MB")
    }
}

impl std::error::Error for DeadlinePassed {}

fn deadline_passed() -> std::io::Error {
    std::io::Error::other(DeadlinePassed)
}

/// A data-path I/O failure, worded for the operator.
fn data_error(e: std::io::Error, peer: &str, timeout: Duration, doing: &str) -> Error {
    if let Some(sig) = crate::signals::received() {
        return Error::interrupted(sig);
    }
    let timeout = humantime::format_duration(timeout);
    match e.kind() {
        _ if is_timeout(&e) => Error::run(format!("no progress from the {peer} for {timeout} while {doing}")),
        _ if e.get_ref().is_some_and(|inner| inner.is::<DeadlinePassed>()) => Error::run(format!(
            "no progress from the {peer} while {doing}: each 4 MiB, and the whole request, must cross within the \
             timeout ({timeout}) plus 1 s per 10 MB"
        )),
        std::io::ErrorKind::UnexpectedEof => {
            Error::connection_lost(format!("the {peer} closed the data connection while {doing}"))
        }
        _ => Error::connection_lost(format!("lost the {peer} while {doing}: {e}")),
    }
}

/// Runs `work` on one thread per item. When one fails, `on_error` wakes the
/// others (the round is lost, nobody should wait out a timeout) and the error
/// that happened first is returned, not a sibling's echo of it.
fn on_threads<T: Send>(
    items: Vec<T>,
    work: impl Fn(usize, T) -> Result<()> + Sync,
    on_error: impl Fn() + Sync,
) -> Result<()> {
    let first = std::sync::OnceLock::new();
    std::thread::scope(|s| {
        for (k, item) in items.into_iter().enumerate() {
            let (work, first, on_error) = (&work, &first, &on_error);
            s.spawn(move || {
                if let Err(e) = work(k, item) {
                    if first.set(e).is_ok() {
                        on_error();
                    }
                }
            });
        }
    });
    first.into_inner().map_or(Ok(()), Err)
}

fn wakers<'a>(streams: impl Iterator<Item = &'a TcpStream>) -> Result<Vec<TcpStream>> {
    Ok(streams.map(TcpStream::try_clone).collect::<std::io::Result<_>>()?)
}

fn shutdown_all(streams: &[TcpStream]) {
    for s in streams {
        let _ = s.shutdown(Shutdown::Both);
    }
}

/// The socket settings the kernel actually applied, for the report.
fn describe(streams: &[TcpStream], spec: &TransportSpec, staged: bool) -> TransportInfo {
    let s = &streams[0];
    let sock = SockRef::from(s);
    let sndbuf = sock.send_buffer_size().unwrap_or(0) as u64;
    let rcvbuf = sock.recv_buffer_size().unwrap_or(0) as u64;
    let congestion = congestion_control(s).unwrap_or_else(|| "unknown".into());
    let mss = sock.tcp_mss().map(|m| m.to_string()).unwrap_or_else(|_| "unknown".into());
    // Linux reports twice what it set, and sets no more than the sysctl caps.
    let sizing = match spec.socket_buffer {
        Some(n) if sndbuf / 2 < n || rcvbuf / 2 < n => {
            format!("asked {}, capped by net.core.wmem_max/rmem_max: raise them with sysctl", fmt_bytes(n))
        }
        Some(n) => format!("asked {}", fmt_bytes(n)),
        None => "kernel autotuning".into(),
    };
    let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut info = TransportInfo {
        summary: format!(
            "tcp: {} stream(s) {local} <-> {peer}, TCP_NODELAY, {congestion}, SO_SNDBUF {} / SO_RCVBUF {} ({sizing}){}",
            streams.len(),
            fmt_bytes(sndbuf),
            fmt_bytes(rcvbuf),
            if staged { format!(", GPU memory {}", staged::Staging::describe()) } else { String::new() }
        ),
        ..Default::default()
    };
    let d = &mut info.details;
    d.insert("streams".into(), streams.len().to_string());
    d.insert("local".into(), local);
    d.insert("peer".into(), peer);
    d.insert("congestion_control".into(), congestion);
    d.insert("mss".into(), mss);
    d.insert("so_sndbuf".into(), sndbuf.to_string());
    d.insert("so_rcvbuf".into(), rcvbuf.to_string());
    d.insert("buffer_sizing".into(), sizing);
    info
}

fn congestion_control(s: &TcpStream) -> Option<String> {
    use std::os::fd::AsRawFd;
    let mut name = [0u8; 32];
    let mut len = name.len() as libc::socklen_t;
    // SAFETY: name and len describe a writable buffer of len bytes.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0).then(|| {
        let end = name.iter().position(|&b| b == 0).unwrap_or(len as usize);
        String::from_utf8_lossy(&name[..end]).into_owned()
    })
}
