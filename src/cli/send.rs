//! `kvxfer send` (`kvxfer-send`): the sender, prefill's side, with each pair's plan under P x D.

use super::*;

/// One receiver, or several at once (a one-to-many fan).
pub(super) fn send(a: &SendArgs) -> Result<()> {
    let pairs = fan::receivers(&a.connect)?;
    let Some((plans, memory)) = checked(a)? else { return Ok(()) };
    let outputs = Outputs::open(&a.run.output)?;
    if pairs > 1 {
        return fan::send_many(a, plans, memory, outputs);
    }
    let screen = screen_for(&a.run.output).keeping(outputs.kept());
    let plan = plans[0].clone();
    let (report, result) =
        sender_side(&a.connect[0], a.bind, &sender_options(&a.run), plan, memory, &screen, None);
    outputs.conclude(report, result, &screen)
}

/// One sender's run to its first receiver: its checks (an error before
/// anything runs), then the run's report and how it ended. `kvxfer
/// compare --connect` runs one per round and candidate.
pub(super) fn send_run(a: &SendArgs, screen: &Screen) -> Result<(Option<RunReport>, Result<()>)> {
    let Some((plans, memory)) = checked(a)? else {
        return Err(Error::usage("this prefill rank sends to no decode rank: nothing to run"));
    };
    let plan = plans[0].clone();
    Ok(sender_side(&a.connect[0], a.bind, &sender_options(&a.run), plan, memory, screen, None))
}

/// Everything a sender checks before it connects: each pair's plan and the
/// gate, the receivers' addresses, the transport and its library, the
/// memory (and CUDA for GPU memory), and the host memory its buffers take.
/// None for a prefill rank that nobody reads.
fn checked(a: &SendArgs) -> Result<Option<(Vec<Plan>, MemorySpec)>> {
    let Some(plans) = pair_plans(a, a.run.plan()?)? else { return Ok(None) };
    a.run.check_gate(&plans[0])?;
    for addr in &a.connect {
        net::resolve(addr)?;
    }
    let memory = a.run.memory.spec();
    let spec = a.run.transport_spec();
    spec.validate()?;
    spec.check_memory(memory.kind).map_err(Error::usage)?;
    transport::check_library(&spec, &plans[0], &a.run.local())?;
    if !matches!(memory.kind, MemoryKind::Host) {
        gpu::init()?;
    }
    let bytes = plans.iter().map(|p| p.host_bytes(false, memory.kind.on_host())).sum();
    memory::check_host_budget(bytes, "the sender's buffers (one per lane and receiver)")?;
    Ok(Some((plans, memory)))
}

/// The plan of each pair this sender runs, one per `--connect`: under
/// different TP, this prefill rank's pairs with the decode ranks that read
/// from it, in order. None for a prefill rank that nobody reads (MLA's
/// replicated latent is read from one rank of several).
pub(super) fn pair_plans(a: &SendArgs, plan: Plan) -> Result<Option<Vec<Plan>>> {
    let Some(tp) = plan.tp.clone() else {
        if a.prefill_rank.is_some() || a.prefill_instances != 1 || a.prefill_instance != 0 {
            return Err(Error::usage(
                "--prefill-rank and --prefill-instance(s) need --prefill-tp/--decode-tp",
            ));
        }
        return Ok(Some(vec![plan; a.connect.len()]));
    };
    let t = tp.topology;
    let p = match a.prefill_rank {
        Some(p) if p < t.prefill_tp => p,
        Some(p) => {
            return Err(Error::usage(format!(
                "--prefill-rank {p} is not a rank of prefill TP {}",
                t.prefill_tp
            )))
        }
        None if t.prefill_tp == 1 => 0,
        None => {
            return Err(Error::usage(format!(
                "--prefill-rank is needed with prefill TP {}: which of its ranks this sender is",
                t.prefill_tp
            )))
        }
    };
    let readers = t.readers(&plan.shape.model, p);
    if readers.is_empty() {
        eprintln!(
            "kvxfer-send: prefill rank {p} of {t}: the decode ranks read the replicated MLA latent from other prefill \
             ranks (NixlConnector only notifies this one); nothing to send"
        );
        return Ok(None);
    }
    if readers.len() != a.connect.len() {
        let ranks: Vec<String> = readers.iter().map(u32::to_string).collect();
        return Err(Error::usage(format!(
            "prefill rank {p} of {t} is read by decode rank{} {}: --connect names {} receiver{}; give one per decode \
             rank, in that order",
            if readers.len() > 1 { "s" } else { "" },
            ranks.join(", "),
            a.connect.len(),
            if a.connect.len() > 1 { "s" } else { "" }
        )));
    }
    let plans = readers.iter().map(|&d| {
        let mut pair = plan.clone();
        let (instances, instance) = (a.prefill_instances, a.prefill_instance);
        pair.tp = Some(crate::plan::TpPlan { topology: t, pair: Some((p, d)), instances, instance });
        pair.validate().map(|_| pair)
    });
    plans.collect::<Result<Vec<_>>>().map(Some)
}
