//! `kvxfer pair`: both sides on this host over loopback.

use super::*;

pub(super) fn pair(a: &PairArgs) -> Result<()> {
    let outputs = Outputs::open(&a.run.output)?;
    let screen = screen_for(&a.run.output);
    // A check that fails before anything runs leaves no report files behind.
    let (report, result) = pair_run(a, &screen).unwrap_or_else(|e| (None, Err(e)));
    outputs.conclude(report, result, &screen)
}

/// One pair's run: its checks (an error before anything runs), then the
/// run's report and how it ended. `kvxfer compare` runs one per round and
/// candidate.
pub(super) fn pair_run(a: &PairArgs, screen: &Screen) -> Result<(Option<RunReport>, Result<()>)> {
    if let Some(t) = a.run.model.topology() {
        return Err(Error::usage(format!(
            "{t} is {} sender and {} receiver processes, not a pair: start them with kvxfer launch (mpirun or srun \
             with {} ranks) or by hand (kvxfer send --prefill-rank, kvxfer recv --decode-rank; see the README)",
            t.prefill_tp,
            t.decode_tp,
            t.prefill_tp + t.decode_tp
        )));
    }
    let plan = a.run.plan()?;
    a.run.check_gate(&plan)?;
    let spec = a.run.transport_spec();
    let send_memory = a.run.memory.spec();
    let recv_kind = a.recv_memory.unwrap_or(send_memory.kind);
    spec.validate()?;
    for kind in [send_memory.kind, recv_kind] {
        spec.check_memory(kind).map_err(Error::usage)?;
    }
    // Before a second thread exists: NCCL's log settings live in the environment.
    transport::check_library(&spec, &plan, &a.run.local())?;
    if [send_memory.kind, recv_kind].iter().any(|k| *k != MemoryKind::Host) {
        gpu::init()?;
    }
    let recv_memory = MemorySpec {
        kind: recv_kind,
        device: match a.recv_device {
            Some(d) => d,
            // The next GPU, so that the two sides sit on two devices.
            None if recv_kind != MemoryKind::Host => (send_memory.device + 1) % gpu::device_count()?.max(1),
            None => send_memory.device,
        },
    };
    if spec.kind == TransportKind::Nccl && send_memory.device == recv_memory.device {
        return Err(Error::usage(format!(
            "both sides are on GPU {}: NCCL needs one GPU per rank (--device, --recv-device)",
            send_memory.device
        )));
    }
    let bytes = plan.host_bytes(false, send_memory.kind.on_host())
        + plan.host_bytes(true, recv_memory.kind.on_host());
    memory::check_host_budget(
        bytes,
        "the host buffers of this pair (one per lane and side, and a spill pool)",
    )?;
    let listener = net::listen(&a.listen)?;
    let bound = listener.local_addr()?;
    let ip = match bound.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let receiver = ReceiverSide {
        wait: a.run.timeout,
        timeout: a.run.timeout,
        expect: Expectations { memory: recv_memory.kind, ..Default::default() },
        memory: recv_memory,
        local: a.run.local(),
        screen: Screen::silent(),
        busy: None,
    };
    let receiver = std::thread::spawn(move || receiver.run(&listener).1);
    let addr = SocketAddr::new(ip, bound.port()).to_string();
    let (report, result) = sender_side(&addr, None, &sender_options(&a.run), plan, send_memory, screen, None);
    let received = receiver.join().unwrap_or_else(|_| Err(Error::run("the receiver thread panicked")));
    if let Some(r) = &report {
        staged_in_one_process(r);
    }
    // The sender's error already carries the receiver's reason when it had one.
    Ok((report, result.and(received)))
}

/// UCX on GPU memory that did not reach it directly in a pair (staged
/// through host memory, or emulated over tcp/lo): the cause is the pair
/// itself, whose receiver is a thread of this process, where UCX's
/// cuda_ipc works only between processes (on one H100, 0.52 GB/s emulated
/// over tcp/lo in a pair; 1,120 GB/s over cuda_ipc between two processes).
fn staged_in_one_process(r: &RunReport) {
    let path = [&r.sender_transport, &r.receiver_transport].into_iter().find_map(|t| t.path.as_deref());
    let gpu = r.sender_transport.gpu_bus_id.is_some();
    let indirect = path.is_some_and(|p| p.contains("staged through host memory") || p.contains(" emulated "));
    if r.transport.kind == TransportKind::Ucx && gpu && indirect {
        eprintln!(
            "kvxfer pair: UCX did not reach GPU memory directly because kvxfer pair runs its receiver as a \
             thread of this process, and UCX's cuda_ipc works only between processes; run kvxfer-recv and \
             kvxfer-send as two processes (or kvxfer compare --connect to a kvxfer-recv --forever) for the path \
             a deployment takes"
        );
    }
}
