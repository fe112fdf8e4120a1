//! Socket plumbing shared by the control channel and the tcp transport:
//! address parsing (IPv6 literals included) and connect/accept with deadlines.

use crate::error::{Error, Result};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Whether a read or write ended at its timeout (not at an error).
pub fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

/// Time left until `deadline`, or None once it has passed.
pub fn remaining(deadline: Instant) -> Option<Duration> {
    deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
}

/// "host:port", "1.2.3.4:port" or "[v6]:port" into host and port.
pub fn split_host_port(s: &str) -> Result<(String, u16)> {
    let bad = |why: &str| {
        Error::usage(format!("malformed address '{s}': {why} (expected HOST:PORT, IPv4:PORT or [IPv6]:PORT)"))
    };
    let t = s.trim();
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(|| bad("no ']:' after the IPv6 address"))?;
        h.parse::<Ipv6Addr>().map_err(|_| bad("not an IPv6 address inside [ ]"))?;
        (h, p)
    } else {
        let (h, p) = t.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        if h.contains(':') {
            return Err(bad("IPv6 addresses need brackets"));
        }
        (h, p)
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number from 0 to 65535"))?;
    Ok((host.to_string(), port))
}

/// Resolves a peer address; a port of 0 is refused since nobody listens there.
pub fn resolve(s: &str) -> Result<Vec<SocketAddr>> {
    let (host, port) = split_host_port(s)?;
    if port == 0 {
        return Err(Error::usage(format!("malformed address '{s}': port 0 cannot be connected to")));
    }
    let addrs: Vec<SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| Error::usage(format!("cannot resolve '{host}': {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(Error::usage(format!("'{host}' resolves to no address")));
    }
    Ok(addrs)
}

/// Connects from `local` (any port; None: the kernel's choice), so that the
/// connection leaves through that address's interface. A signal ends the
/// wait for the peer's answer (`ErrorKind::Interrupted`), as a host that
/// drops SYNs would otherwise hold it for all of `timeout`.
pub fn connect_from(
    local: Option<IpAddr>,
    addr: &SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::for_address(*addr), socket2::Type::STREAM, None)?;
    if let Some(ip) = local {
        sock.bind(&SocketAddr::new(ip, 0).into())
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind {ip}: {e}")))?;
    }
    sock.set_nonblocking(true)?;
    match sock.connect(&(*addr).into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => answered_within(&sock, timeout)?,
        Err(e) => return Err(e),
    }
    sock.set_nonblocking(false)?;
    Ok(sock.into())
}

/// Waits for a connect in progress to be answered, a tenth of a second at
/// a time between looks for a signal.
fn answered_within(sock: &socket2::Socket, timeout: Duration) -> std::io::Result<()> {
    let until = Instant::now() + timeout;
    loop {
        if crate::signals::received().is_some() {
            return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted by a signal"));
        }
        let Some(left) = remaining(until) else {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"));
        };
        let mut fd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
        let slice = left.min(Duration::from_millis(100)).as_millis().max(1) as libc::c_int;
        // SAFETY: one pollfd, on a socket this function borrows for the call.
        match unsafe { libc::poll(&mut fd, 1, slice) } {
            -1 if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => continue,
            -1 => return Err(std::io::Error::last_os_error()),
            0 => continue,
            _ => {
                return match sock.take_error()? {
                    Some(e) => Err(e),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Connects to the first address that answers, retrying refusals until the
/// deadline (the peer may still be starting); from `local` if given.
pub fn connect_until(
    addrs: &[SocketAddr],
    deadline: Instant,
    peer: &str,
    local: Option<IpAddr>,
) -> Result<TcpStream> {
    // An address of the other family could never be reached from `local`.
    let addrs: Vec<&SocketAddr> =
        addrs.iter().filter(|a| local.is_none_or(|l| l.is_ipv4() == a.is_ipv4())).collect();
    if let (true, Some(l)) = (addrs.is_empty(), local) {
        return Err(Error::usage(format!("--bind {l}: the {peer}'s address has none of that IP version")));
    }
    let (mut last_err, began, mut told) = (None, Instant::now(), false);
    loop {
        crate::signals::check()?;
        for &addr in &addrs {
            let Some(left) = remaining(deadline) else {
                break;
            };
            match connect_from(local, addr, left.min(Duration::from_secs(5))) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    return Ok(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => crate::signals::check()?,
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                    return Err(Error::usage(format!("--bind: {e} (not an address of this host)")))
                }
                Err(e) => last_err = Some((addr, e)),
            }
        }
        if remaining(deadline).is_none() {
            // A deadline that passed before the first attempt ended leaves no error to name.
            return Err(match &last_err {
                Some((addr, e)) => Error::run(format!("no {peer} at {addr} before the deadline: {e}")),
                None => Error::run(format!("no {peer} before the deadline")),
            });
        }
        // Launch order does not matter, but silence would: say once what is
        // awaited, after a moment in which a receiver started with it comes up.
        if let (false, true, Some((addr, e))) =
            (told, began.elapsed() >= Duration::from_millis(200), &last_err)
        {
            let left = Duration::from_secs(remaining(deadline).map_or(0, |d| d.as_secs_f64().round() as u64));
            eprintln!(
                "kvxfer: no {peer} at {addr} yet ({e}); trying again for {} (--timeout)",
                humantime::format_duration(left)
            );
            told = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Binds a listening address; "[::]:PORT" falls back to 0.0.0.0 where the
/// host has no IPv6.
pub fn listen(s: &str) -> Result<TcpListener> {
    let (host, port) = split_host_port(s)?;
    let ip: IpAddr = host.parse().map_err(|_| {
        Error::usage(format!("malformed listen address '{s}': the host must be an IP address"))
    })?;
    let bind = |ip: IpAddr| TcpListener::bind(SocketAddr::new(ip, port));
    let result = match bind(ip) {
        Err(_) if ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED) => bind(IpAddr::from([0, 0, 0, 0])),
        r => r,
    };
    result.map_err(|e| Error::run(format!("cannot listen on {s}: {e}")))
}

/// Waits up to `within` for one connection; None if none came.
pub fn accept_within(listener: &TcpListener, within: Duration) -> Result<Option<(TcpStream, SocketAddr)>> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + within;
    loop {
        match listener.accept() {
            Ok((s, addr)) => {
                s.set_nonblocking(false)?;
                s.set_nodelay(true)?;
                return Ok(Some((s, addr)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let Some(left) = remaining(deadline) else { return Ok(None) };
                wait_readable(listener, left.min(Duration::from_millis(500)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::run(format!("accept failed: {e}"))),
        }
    }
}

/// Waits for one connection until the deadline.
pub fn accept_until(
    listener: &TcpListener,
    deadline: Instant,
    peer: &str,
) -> Result<(TcpStream, SocketAddr)> {
    accept_watching(listener, deadline, peer, &mut || Ok(()))
}

/// Waits for one connection until the deadline, calling `watch` every
/// 100 ms between tries: it ends the wait early with its error (a peer that
/// aborted on the control connection), as a signal does.
pub fn accept_watching(
    listener: &TcpListener,
    deadline: Instant,
    peer: &str,
    watch: &mut dyn FnMut() -> Result<()>,
) -> Result<(TcpStream, SocketAddr)> {
    loop {
        let slice = remaining(deadline).unwrap_or_default().min(Duration::from_millis(100));
        if let Some(c) = accept_within(listener, slice)? {
            return Ok(c);
        }
        // The first SIGINT, SIGTERM or SIGHUP ends the wait (it was ignored here).
        crate::signals::check()?;
        watch()?;
        if remaining(deadline).is_none() {
            let at = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
            return Err(Error::run(format!("no {peer} connected to {at} before the deadline")));
        }
    }
}

fn wait_readable(fd: &impl AsRawFd, timeout: Duration) {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().max(1) as libc::c_int) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(split_host_port("[::1]:5201").unwrap(), ("::1".into(), 5201));
        assert_eq!(split_host_port("10.0.0.2:80").unwrap(), ("10.0.0.2".into(), 80));
        assert_eq!(split_host_port("node-7:7477").unwrap(), ("node-7".into(), 7477));
        for bad in ["::1:5201", "host", "host:", ":80", "[::1]5201", "[zz]:1", "h:99999", "h:-1"] {
            let e = split_host_port(bad).unwrap_err();
            assert!(e.message.contains("malformed address"), "{bad}: {e}");
        }
        assert!(resolve("127.0.0.1:0").is_err());
    }

    #[test]
    fn accept_gives_up_at_the_deadline() {
        let l = listen("127.0.0.1:0").unwrap();
        let t = Instant::now();
        let e = accept_until(&l, t + Duration::from_millis(200), "sender").unwrap_err();
        assert!(e.message.contains("no sender connected"));
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn connect_gives_up_at_the_deadline() {
        // Bind then drop to get a port nobody listens on.
        let port = listen("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addrs = resolve(&format!("127.0.0.1:{port}")).unwrap();
        let t = Instant::now();
        let e = connect_until(&addrs, t + Duration::from_millis(300), "receiver", None).unwrap_err();
        assert!(e.message.contains("no receiver at"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3));
    }
}
