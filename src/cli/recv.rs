//! `kvxfer recv` (`kvxfer-recv`): the receiver, decode's side; a P x D decode rank serves every sender that feeds it.

use super::*;

pub(super) fn recv(a: &RecvArgs) -> Result<()> {
    if a.serve_inherited {
        if a.memory.memory != MemoryKind::Host {
            gpu::init()?;
        }
        return service::serve_inherited(a);
    }
    recv_on(net::listen(&a.listen)?, a)
}

/// The receiver, on a socket already listening.
pub(super) fn recv_on(listener: std::net::TcpListener, a: &RecvArgs) -> Result<()> {
    let _side = tracing::debug_span!("recv").entered();
    if a.memory.memory != MemoryKind::Host {
        gpu::init()?;
    }
    if a.forever {
        return service::serve(listener, a);
    }
    if a.json_dir.is_some() {
        return Err(Error::usage("--json-dir is for --forever, which writes one report per run: use --json"));
    }
    let outputs = Outputs::open(&a.output)?;
    eprintln!("kvxfer-recv: listening on {}", listener.local_addr()?);
    let mut side = receiver_side(a);
    side.screen = side.screen.keeping(outputs.kept());
    // One lobby for the run: a P x D decode rank learns from its first
    // sender how many feed it, and the others may be greeted already.
    let lobby = session::Lobby::new(side.timeout, &side.expect);
    if a.senders > 1 {
        return fan::receive_many(&listener, side, outputs, None, a.senders as usize, &lobby);
    }
    match lobby.next_sender(&listener, side.wait) {
        Ok(first) => run_from(&listener, side, outputs, first, &lobby),
        Err(e) => outputs.conclude(None, Err(e), &side.screen),
    }
}

/// A one-shot run, from its first sender on: a P x D decode rank gathers
/// the other prefill ranks that feed it first.
fn run_from(
    listener: &std::net::TcpListener,
    side: ReceiverSide,
    outputs: Outputs,
    first: session::ReceiverSession,
    lobby: &session::Lobby,
) -> Result<()> {
    if let Some(senders) = fed_by(&first.hello.plan) {
        return fan::receive_many(listener, side, outputs, Some(first), senders, lobby);
    }
    lobby.close();
    // One-shot: a second sender hears "busy" while this one is served.
    let _busy = match side.busy {
        None => Some(service::BusyWhile::serving(listener, &[first.ctrl.peer_addr])?),
        Some(_) => None,
    };
    serve_one(side, outputs, first)
}

/// One sender's run, welcomed and served to its report.
pub(super) fn serve_one(
    side: ReceiverSide,
    outputs: Outputs,
    mut first: session::ReceiverSession,
) -> Result<()> {
    let bytes = first.hello.plan.host_bytes(true, side.memory.kind.on_host());
    if let Err(e) =
        memory::check_host_budget(bytes, "the receiver's buffers (one per lane, and a spill pool)")
    {
        let refused = session::refuse(&mut first, &e.message);
        return outputs.conclude(None, Err(Error::usage(refused.message)), &side.screen);
    }
    side.mark_busy(&[first.ctrl.peer_addr]);
    let env = EnvInfo::collect();
    let (report, result) = match session::welcome(&mut first, &env, None) {
        Ok(()) => side.serve(first, env, None),
        Err(e) => (None, Err(e)),
    };
    outputs.conclude(report, result, &side.screen)
}

/// How many senders a P x D decode rank serves at once, where several
/// prefill ranks feed it (said as it learns so from its first).
pub(super) fn fed_by(plan: &Plan) -> Option<usize> {
    let (ranks, senders, instances) = feeding(plan).filter(|f| f.1 > 1)?;
    let of = if instances > 1 { format!(" of each of {instances} prefill instances") } else { String::new() };
    eprintln!("kvxfer-recv: prefill ranks {ranks:?}{of} feed this decode rank; serving them at once");
    Some(senders)
}

/// A P x D decode rank's feeders: the prefill ranks, how many senders
/// they are, and the prefill instances.
fn feeding(plan: &Plan) -> Option<(Vec<u32>, usize, u32)> {
    plan.tp.as_ref().and_then(|t| {
        t.pair.map(|(_, d)| {
            (t.topology.sources(&plan.shape.model, d), t.senders_of(&plan.shape.model, d), t.instances)
        })
    })
}

pub(super) fn receiver_side(a: &RecvArgs) -> ReceiverSide {
    ReceiverSide {
        wait: a.wait_for_sender,
        timeout: a.timeout,
        expect: Expectations {
            transport: a.expect_transport,
            model: a.expect_model.clone(),
            memory: a.memory.memory,
            decode_rank: a.decode_rank,
            kv_layout: a.kv_layout,
            gate: a.output.gate().needs(),
            handshake: a.handshake_timeout,
        },
        memory: a.memory.spec(),
        local: a.libraries.local(),
        screen: screen_for(&a.output),
        busy: None,
    }
}
