//! The commands: `plan` (no hardware), `send` and `recv` (one side each, also
//! the `kvxfer-send` and `kvxfer-recv` binaries) and `pair` (both sides on
//! this host over loopback).

pub mod args;
mod doctor;
mod fan;
mod groups;
mod matrix;
#[cfg(feature = "mpi")]
mod mpi_boot;
mod service;
mod size;
mod tp_plan;
pub(crate) mod turns;

use crate::env::EnvInfo;
use crate::error::{Error, Result};
use crate::gpu;
use crate::kv::presets;
use crate::measure;
use crate::memory::{self, MemoryKind, MemorySpec};
use crate::net;
use crate::plan::Plan;
use crate::report::gate::Gate;
use crate::report::screen::Screen;
use crate::report::{self, Exporter, RunReport};
use crate::run::{sender_side, ReceiverSide, SenderOptions};
use crate::session::{self, Expectations, Role};
use crate::transport::{self, TransportKind};
use crate::units::fmt_bytes;
use args::{
    DoctorArgs, LaunchArgs, LogArgs, MatrixArgs, OutputArgs, PairArgs, PlanArgs, RecvArgs, ReportArgs,
    RunArgs, SendArgs, SizeArgs,
};
use clap::{Parser, Subcommand};
use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("KVXFER_GIT_COMMIT"), ")");

/// How fast does this fabric move KV cache from a prefill GPU to a decode GPU?
#[derive(Parser, Debug)]
#[command(name = "kvxfer", version = VERSION, about)]
pub struct Kvxfer {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// KV bytes and messages of a model at some prompt lengths (no hardware needed)
    Plan(PlanArgs),
    /// Decode-side buffer sizes (vLLM kv_buffer_size, pinned pool, LMCache) for a model and traffic mix
    Size(SizeArgs),
    /// Merge --json reports into one table and plots: bandwidth and latency by prompt length, histograms
    Report(ReportArgs),
    /// The links kvxfer can find on this host: GPUs' PCIe, NVLinks between them, NICs, RDMA ports
    Links,
    /// What this node has (GPUs, driver, NCCL, UCX, libfabric, NICs, RDMA, MPI) and which runs will work
    Doctor(DoctorArgs),
    /// One rank of a pair started by mpirun or srun: rank 0 sends, rank 1 receives
    Launch(LaunchArgs),
    /// Every ordered pair of N ranks (mpirun or srun), to find the slow link: rank 0 prints the matrix
    Matrix(MatrixArgs),
    /// Run the sender and the receiver on this host over loopback
    Pair(PairArgs),
    /// The sender (prefill side); the same as kvxfer-send
    Send(SendArgs),
    /// The receiver (decode side); the same as kvxfer-recv
    Recv(RecvArgs),
}

/// The sender (prefill side): proposes the plan, writes the KV.
#[derive(Parser, Debug)]
#[command(name = "kvxfer-send", version = VERSION)]
pub struct SendCli {
    #[command(flatten)]
    args: SendArgs,
    #[command(flatten)]
    log: LogArgs,
}

/// The receiver (decode side): adopts the sender's plan, receives, checks and times the KV.
#[derive(Parser, Debug)]
#[command(name = "kvxfer-recv", version = VERSION)]
pub struct RecvCli {
    #[command(flatten)]
    args: RecvArgs,
    #[command(flatten)]
    log: LogArgs,
}

pub fn main_kvxfer() -> ! {
    // Called through a link named kvxfer-send or kvxfer-recv, it is that
    // binary: one file can carry all three (a GPU machine's small carry).
    let called = std::env::args_os().next().map(PathBuf::from);
    match called.as_ref().and_then(|p| p.file_name()).and_then(|n| n.to_str()) {
        Some("kvxfer-send") => main_send(),
        Some("kvxfer-recv") => main_recv(),
        _ => {}
    }
    crate::signals::install();
    let cli: Kvxfer = parse_args("kvxfer");
    crate::logging::init(cli.log.verbose);
    exit_with(
        "kvxfer",
        match cli.command {
            Command::Plan(a) => plan(&a),
            Command::Size(a) => size::run(&a),
            Command::Report(a) => compare(&a),
            Command::Links => links(),
            Command::Doctor(a) => doctor::run(&a),
            Command::Launch(a) => launch(&a),
            Command::Matrix(a) => matrix::run(&a),
            Command::Pair(a) => pair(&a),
            Command::Send(a) => send(&a),
            Command::Recv(a) => recv(&a),
        },
    )
}

pub fn main_send() -> ! {
    crate::signals::install();
    let cli: SendCli = parse_args("kvxfer-send");
    crate::logging::init(cli.log.verbose);
    exit_with("kvxfer-send", send(&cli.args))
}

pub fn main_recv() -> ! {
    crate::signals::install();
    let cli: RecvCli = parse_args("kvxfer-recv");
    crate::logging::init(cli.log.verbose);
    exit_with("kvxfer-recv", recv(&cli.args))
}

/// The command line, or the exit: help and version as clap prints them, a
/// bad argument as every other error is printed ("PROGRAM: error: ...",
/// exit 2), with clap's usage and hint after it.
fn parse_args<T: Parser>(program: &str) -> T {
    match T::try_parse() {
        Ok(t) => t,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.render().to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            eprint!("{program}: error: {text}");
            std::process::exit(Error::usage("").exit_code())
        }
    }
}

fn exit_with(program: &str, result: Result<()>) -> ! {
    let broken_pipe = std::io::Error::from_raw_os_error(libc::EPIPE).to_string();
    let code = match result {
        Ok(()) => 0,
        // Stdout closed early (`kvxfer plan | head`): stop quietly, as a filter does.
        Err(e) if e.message == broken_pipe => 0,
        Err(e) => {
            eprintln!("{program}: error: {e}");
            e.exit_code()
        }
    };
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // The libraries a run loads do not all survive their own destructors:
    // the libnl-route bundled with NIXL's UCX (nixl-cu13 1.5.1, also loaded
    // by -t ucx on that UCX) crashes in rtnl_tc_unregister at exit. kvxfer
    // needs none of them, so it ends without them, everything written.
    // SAFETY: flushes C's streams, then ends the process.
    unsafe {
        libc::fflush(std::ptr::null_mut());
        libc::_exit(code)
    }
}

fn plan(a: &PlanArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if a.list_models {
        return list_models(&mut out);
    }
    let shape = a.model.resolve()?;
    crate::plan::not_yet_for_hybrid(&shape, a.conversation.turns.is_some(), a.model.topology().is_some())?;
    if let Some(t) = a.model.topology() {
        crate::plan::hybrid_topology(&shape, &t)?;
    }
    if let Some(t) = a.model.topology() {
        if a.conversation.turns.is_some() {
            return Err(Error::usage(
                "--turns with --prefill-tp/--decode-tp: not yet; show one or the other",
            ));
        }
        return tp_plan::print(a, &shape, t, &mut out);
    }
    if let Some(c) = turns::conversation(&a.conversation, &shape)? {
        return turns::print(&c, &a.conversation, &shape, &a.granularity, &mut out);
    }
    let heads = match shape.heads_per_rank() {
        Some(h) => format!("{h} KV heads per rank"),
        None => "MLA latent, not split by TP".into(),
    };
    let plan = a.shown(&shape, a.granularity.clone(), None);
    plan.validate()?;
    writeln!(out, "model        {}", shape.model.describe())?;
    writeln!(out, "TP           {} ({heads})", shape.tp)?;
    writeln!(out, "block size   {} tokens", shape.block_size)?;
    writeln!(
        out,
        "KV per token {} bytes ({}) per rank = {} attention layers x {} bytes",
        shape.bytes_per_token(),
        fmt_bytes(shape.bytes_per_token()),
        (0..shape.model.layers).filter(|&l| shape.model.layer_kind(l).is_attention()).count(),
        shape.layer_bytes_per_token()
    )?;
    groups::print(&shape, &plan.prompt_lengths, &mut out)?;
    if a.granularity.contains(&crate::plan::Granularity::Block) {
        writeln!(
            out,
            "blocks       table {}, pools of {} blocks per (layer, K/V) on each side, descriptors {}",
            plan.block_table,
            plan.pool(),
            if plan.coalesce { "merged where adjacent on both sides (as NIXL)" } else { "one per block" }
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:>8} {:>8} {:>9} {:>12} {:>12} {:>14} {:>9}",
        "prompt", "gran", "messages", "msg size", "request", "request bytes", "ops"
    )?;
    let mut rows = Vec::new();
    for point in plan.points() {
        let l = point.layout;
        let ops = l.descriptors();
        writeln!(
            out,
            "{:>8} {:>8} {:>9} {:>12} {:>12} {:>14} {:>9}",
            l.tokens,
            l.granularity.to_string(),
            l.message_count,
            fmt_bytes(l.message_bytes as u64),
            fmt_bytes(l.total_bytes() as u64),
            l.total_bytes(),
            ops.len()
        )?;
        let mut row = serde_json::to_value(&l).expect("a layout serializes");
        row["operations"] = ops.len().into();
        if l.granularity == crate::plan::Granularity::Block {
            // Where each message sits on each side: what another tool needs to move the same blocks.
            let offsets = |side| l.slots(side).map(|s| s.offset).collect::<Vec<_>>();
            row["sender_offsets"] = offsets(crate::plan::Side::Sender).into();
            row["receiver_offsets"] = offsets(crate::plan::Side::Receiver).into();
            row["buffer_bytes"] = l.buffer_bytes().into();
        }
        rows.push((l, row));
    }
    if rows
        .iter()
        .any(|(l, _)| l.granularity == crate::plan::Granularity::Block && l.tokens % shape.block_size != 0)
    {
        writeln!(
            out,
            "\nblock rows move whole blocks: a partly filled last block travels in full, as in vLLM"
        )?;
    }
    writeln!(out, "ops: operations per request (descriptors after merging, for blocks)")?;
    if let Some(path) = &a.json {
        let doc = serde_json::json!({
            "shape": shape,
            "kv_bytes_per_token": shape.bytes_per_token(),
            "layer_groups": groups::json(&shape, &plan.prompt_lengths),
            "block_table": plan.block_table,
            "pool_blocks": plan.pool(),
            "coalesce": plan.coalesce,
            "points": rows.into_iter().map(|(_, row)| row).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&doc).expect("plan serializes");
        std::fs::write(path, text + "\n")
            .map_err(|e| Error::usage(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

/// `kvxfer plan --list-models`: each preset, its bytes per token, its aliases.
fn list_models(out: &mut dyn Write) -> Result<()> {
    for name in presets::names() {
        let model = presets::lookup(name)?;
        let block = crate::kv::vllm_block_size(&model, 1, None)?;
        let shape = crate::kv::KvShape::new(model, 1, block)?;
        let also = match presets::aliases(name) {
            [] => String::new(),
            names => format!(" (also {})", names.join(", ")),
        };
        // A hybrid model's bytes per token depend on the prompt: say them at 32k.
        let hma = match shape.model.is_hybrid() {
            true => {
                format!("; with HMA {} B/token at 32k tokens", shape.request_block_bytes(32768) / 32768)
            }
            false => String::new(),
        };
        writeln!(
            out,
            "{:<18} {:>9} B/token  {}{also}{hma}",
            name,
            shape.bytes_per_token(),
            shape.model.describe()
        )?;
    }
    Ok(())
}

/// `kvxfer links`: what `--link` would be found as, for each kind of pair.
fn links() -> Result<()> {
    // The probes of `kvxfer doctor`, shown alone.
    let mut out = std::io::stdout().lock();
    let mut have = doctor::Have::new();
    for section in [doctor::gpus(&mut have), doctor::network()] {
        for f in section.findings {
            writeln!(out, "{:<24} {}  ({})", f.what, f.found, f.source)?;
        }
    }
    Ok(())
}

/// `kvxfer report`: the runs merged into one table and a set of plots.
fn compare(a: &ReportArgs) -> Result<()> {
    // `kvxfer matrix` JSONs are drawn as heatmaps; the rest are runs.
    let (matrices, runs): (Vec<PathBuf>, Vec<PathBuf>) =
        a.runs.iter().cloned().partition(|p| matrix::is_matrix(p));
    if !matrices.is_empty() {
        std::fs::create_dir_all(&a.out)
            .map_err(|e| Error::usage(format!("cannot create {}: {e}", a.out.display())))?;
        for path in &matrices {
            for f in matrix::draw(path, &a.out)? {
                println!("wrote {}", f.display());
            }
        }
        if runs.is_empty() && a.baseline.is_none() {
            return Ok(());
        }
    }
    let mut paths = runs;
    if let Some(b) = a.baseline.as_ref().filter(|b| !paths.contains(b)) {
        paths.insert(0, b.clone());
    }
    let runs = paths
        .iter()
        .map(|p| {
            let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            report::compare::load(p).map(|r| (name, r))
        })
        .collect::<Result<Vec<_>>>()?;
    let baseline = a.baseline.as_ref().map(|b| {
        let i = paths.iter().position(|p| p == b).expect("the baseline is among the runs");
        report::compare::Baseline::of(&runs[i].0, &runs[i].1)
    });
    let series = report::compare::series(&runs);
    if series.iter().all(|s| s.points.is_empty()) {
        return Err(Error::usage("the reports hold no measured points"));
    }
    std::fs::create_dir_all(&a.out)
        .map_err(|e| Error::usage(format!("cannot create {}: {e}", a.out.display())))?;
    let write = |name: &str, text: String| {
        let path = a.out.join(name);
        std::fs::write(&path, text)
            .map_err(|e| Error::usage(format!("cannot write {}: {e}", path.display())))?;
        Ok::<_, Error>(path)
    };
    let md = report::compare::markdown(&series, baseline.as_ref());
    let csv = report::compare::csv(&series, baseline.as_ref())?;
    let mut files = vec![write("summary.md", md.clone())?, write("summary.csv", csv)?];
    if let Some(turns) = report::compare::turns_csv(&series)? {
        files.push(write("turns.csv", turns)?);
    }
    files.extend(report::plot::all(&a.out, &series)?);
    let mut out = std::io::stdout().lock();
    write!(out, "{md}")?;
    writeln!(out)?;
    for f in files {
        writeln!(out, "wrote {}", f.display())?;
    }
    Ok(())
}

/// One receiver, or several at once (a one-to-many fan).
fn send(a: &SendArgs) -> Result<()> {
    let pairs = fan::receivers(&a.connect)?;
    let Some(plans) = pair_plans(a, a.run.plan()?)? else { return Ok(()) };
    let plan = plans[0].clone();
    a.run.check_gate()?;
    for addr in &a.connect {
        net::resolve(addr)?;
    }
    let memory = a.run.memory.spec();
    let spec = a.run.transport_spec();
    spec.validate()?;
    spec.check_memory(memory.kind).map_err(Error::usage)?;
    transport::check_library(&spec, &plan, &a.run.local())?;
    if !matches!(memory.kind, MemoryKind::Host) {
        gpu::init()?;
    }
    if pairs > 1 {
        measure::not_in_a_fan(&plan)?;
    }
    let outputs = Outputs::open(&a.run.output)?;
    if memory.kind.on_host() {
        let bytes = plans.iter().map(|p| p.max_buffer_bytes() as u64).sum();
        memory::check_host_budget(bytes, "the sender's buffers")?;
    }
    if pairs > 1 {
        return fan::send_many(a, plans, memory, outputs);
    }
    let screen = screen_for(&a.run.output);
    let (report, result) =
        sender_side(&a.connect[0], a.bind, &sender_options(&a.run), plan, memory, &screen, None);
    outputs.conclude(report, result, &screen)
}

/// The plan of each pair this sender runs, one per `--connect`: under
/// different TP, this prefill rank's pairs with the decode ranks that read
/// from it, in order. None for a prefill rank that nobody reads (MLA's
/// replicated latent is read from one rank of several).
fn pair_plans(a: &SendArgs, plan: Plan) -> Result<Option<Vec<Plan>>> {
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

/// `kvxfer launch`: this process's role from the launcher's rank; the
/// receiver listens on the rendezvous port, the sender connects to it. Each
/// rank takes GPU `--device` + its rank on the node. The sender prints and
/// writes the results; the receiver stays quiet but holds the gate too.
fn launch(a: &LaunchArgs) -> Result<()> {
    let me = crate::launch::Launch::from_env()?;
    let topology = a.run.model.topology();
    let roles = match topology {
        Some(t) => crate::launch::tp_roles(&a.roles, t, me.size),
        None => crate::launch::roles(&a.roles, me.size),
    };
    let roles = roles.map_err(|e| e.context(me.launcher))?;
    let receivers: Vec<usize> = (0..roles.len()).filter(|r| roles[*r] == Role::Receiver).collect();
    let senders = roles.len() - receivers.len();
    if !a.rendezvous.is_empty() && a.rendezvous.len() != receivers.len() {
        return Err(Error::usage(format!(
            "--rendezvous names {} addresses for {} receiving ranks: give one HOST:PORT per receiver, in rank order",
            a.rendezvous.len(),
            receivers.len()
        )));
    }
    let mut run = a.run.clone();
    run.memory.device += me.local_rank as usize;
    // Only receiving ranks listen: each on its rendezvous port, or any free one.
    let mine = receivers.iter().position(|r| *r == me.rank as usize);
    let listener = match mine {
        Some(k) => {
            let port = match a.rendezvous.get(k) {
                Some(rv) => net::split_host_port(rv)?.1,
                None => 0,
            };
            Some(net::listen(&format!("[::]:{port}"))?)
        }
        None => None,
    };
    // Without --rendezvous (the mpi feature), MPI tells the senders where to go.
    #[cfg(feature = "mpi")]
    let (_mpi, rendezvous) = match a.rendezvous.is_empty() {
        false => (None, a.rendezvous.clone()),
        true => mpi_boot::rendezvous(listener.as_ref()).map(|(b, rv)| (Some(b), rv))?,
    };
    #[cfg(not(feature = "mpi"))]
    let rendezvous = match a.rendezvous.is_empty() {
        false => a.rendezvous.clone(),
        true => return Err(Error::usage("--rendezvous HOST:PORT is needed (or build with --features mpi)")),
    };
    let Some(listener) = listener else {
        // Under different TP, prefill rank r feeds the decode ranks that read from it.
        let (connect, prefill_rank) = match topology {
            Some(t) => {
                let model = a.run.model.resolve()?.model;
                let readers = t.readers(&model, me.rank);
                (readers.iter().map(|&d| rendezvous[d as usize].clone()).collect(), Some(me.rank))
            }
            None => (rendezvous, None),
        };
        return send(&SendArgs {
            connect,
            bind: a.bind,
            prefill_rank,
            prefill_instances: 1,
            prefill_instance: 0,
            run,
        });
    };
    recv_on(
        listener,
        &RecvArgs {
            // A decode rank learns from its first sender how many prefill ranks feed it.
            senders: if topology.is_some() { 1 } else { senders as u32 },
            decode_rank: topology.map(|_| mine.expect("a receiving rank") as u32),
            // The gate holds on this side too.
            output: OutputArgs {
                quiet: true,
                csv: None,
                json: None,
                json_stream: false,
                ..run.output.clone()
            },
            ..RecvArgs::for_rank(&run, rendezvous[mine.expect("a receiving rank")].clone())
        },
    )
}

fn recv(a: &RecvArgs) -> Result<()> {
    recv_on(net::listen(&a.listen)?, a)
}

/// The receiver, on a socket already listening.
fn recv_on(listener: std::net::TcpListener, a: &RecvArgs) -> Result<()> {
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
    let side = receiver_side(a);
    if a.senders > 1 {
        return fan::receive_many(&listener, side, outputs, None, a.senders as usize);
    }
    match session::accept_hello(&listener, side.wait, side.timeout, &side.expect) {
        Ok(first) => run_from(&listener, side, outputs, first, 1),
        Err(e) => outputs.conclude(None, Err(e), &side.screen),
    }
}

/// One run, from its first sender on: a fan gathers the others first.
fn run_from(
    listener: &std::net::TcpListener,
    side: ReceiverSide,
    outputs: Outputs,
    mut first: session::ReceiverSession,
    senders: usize,
) -> Result<()> {
    if senders > 1 {
        return fan::receive_many(listener, side, outputs, Some(first), senders);
    }
    // A decode rank of a P x D run serves every prefill rank that feeds it, at once.
    let plan = &first.hello.plan;
    let feeding = plan.tp.as_ref().and_then(|t| {
        t.pair.map(|(_, d)| {
            (t.topology.sources(&plan.shape.model, d), t.senders_of(&plan.shape.model, d), t.instances)
        })
    });
    if let Some((ranks, senders, instances)) = feeding.filter(|f| f.1 > 1) {
        let of =
            if instances > 1 { format!(" of each of {instances} prefill instances") } else { String::new() };
        eprintln!("kvxfer-recv: prefill ranks {ranks:?}{of} feed this decode rank; serving them at once");
        return fan::receive_many(listener, side, outputs, Some(first), senders);
    }
    side.mark_busy(&[first.ctrl.peer_addr]);
    // One-shot: a second sender hears "busy" while this one is served.
    let _busy = match side.busy {
        None => Some(service::BusyWhile::serving(listener, &[first.ctrl.peer_addr])?),
        Some(_) => None,
    };
    let env = EnvInfo::collect();
    let (report, result) = match session::welcome(&mut first, &env, None) {
        Ok(()) => side.serve(first, env, None),
        Err(e) => (None, Err(e)),
    };
    outputs.conclude(report, result, &side.screen)
}

fn receiver_side(a: &RecvArgs) -> ReceiverSide {
    ReceiverSide {
        wait: a.wait_for_sender,
        timeout: a.timeout,
        expect: Expectations {
            transport: a.expect_transport,
            model: a.expect_model.clone(),
            memory: a.memory.memory,
            decode_rank: a.decode_rank,
            kv_layout: a.kv_layout,
        },
        memory: a.memory.spec(),
        local: a.libraries.local(),
        screen: screen_for(&a.output),
        busy: None,
    }
}

fn pair(a: &PairArgs) -> Result<()> {
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
    a.run.check_gate()?;
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
    let outputs = Outputs::open(&a.run.output)?;
    let host_sides = [send_memory, recv_memory].iter().filter(|m| m.kind.on_host()).count() as u64;
    if host_sides > 0 {
        let what = "the host buffers of this pair";
        memory::check_host_budget(host_sides * plan.max_buffer_bytes() as u64, what)?;
    }
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
    let screen = screen_for(&a.run.output);
    let addr = SocketAddr::new(ip, bound.port()).to_string();
    let (report, result) =
        sender_side(&addr, None, &sender_options(&a.run), plan, send_memory, &screen, None);
    let received = receiver.join().unwrap_or_else(|_| Err(Error::run("the receiver thread panicked")));
    // The sender's error already carries the receiver's reason when it had one.
    let result = result.and(received);
    outputs.conclude(report, result, &screen)
}

/// What a run shows as it goes, as its output options ask.
fn screen_for(a: &args::OutputArgs) -> Screen {
    Screen::new(a.quiet, a.json_stream, a.wide)
}

/// What a sender side takes from its command line.
fn sender_options(run: &RunArgs) -> SenderOptions {
    SenderOptions {
        spec: run.transport_spec(),
        timeout: run.timeout,
        fault: run.fault,
        link: run.link.clone(),
        local: run.local(),
    }
}

/// The --csv and --json files: created before the run, so a bad path fails
/// at once rather than after an hour of measuring, and filled at the end.
struct Outputs {
    files: Vec<(PathBuf, File, Box<dyn Exporter>)>,
    gate: Gate,
}

/// Whether two output paths name one file: the same folder (resolved) and name.
fn same_place(a: &std::path::Path, b: &std::path::Path) -> bool {
    let place = |p: &std::path::Path| {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        (dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()), p.file_name().map(|n| n.to_owned()))
    };
    a == b || place(a) == place(b)
}

/// An output that is a FIFO or a folder: opening the one waits for a
/// reader that may never come, writing the other cannot work.
fn refuse_special(path: &std::path::Path) -> Result<()> {
    // Devices stay writable: --json /dev/null is a way to drop a report.
    let what = match std::fs::metadata(path).ok().as_ref().and_then(crate::input::not_a_file) {
        Some(crate::input::NotAFile::Fifo) => "a FIFO (opening it waits for a reader)",
        Some(crate::input::NotAFile::Folder) => "a folder",
        _ => return Ok(()),
    };
    Err(Error::usage(format!("cannot write {}: it is {what}; give a file", path.display())))
}

impl Outputs {
    fn open(a: &OutputArgs) -> Result<Outputs> {
        let mut files = Vec::new();
        if let (Some(csv), Some(json)) = (&a.csv, &a.json) {
            if same_place(csv, json) {
                return Err(Error::usage(format!(
                    "--csv and --json both name {}: one would overwrite the other",
                    json.display()
                )));
            }
        }
        let wanted: [(&Option<PathBuf>, Box<dyn Exporter>); 2] =
            [(&a.csv, Box::new(report::csv::Csv)), (&a.json, Box::new(report::json::Json))];
        for (path, exporter) in wanted {
            if let Some(path) = path {
                refuse_special(path)?;
                let f = File::create(path)
                    .map_err(|e| Error::usage(format!("cannot write {}: {e}", path.display())))?;
                files.push((path.clone(), f, exporter));
            }
        }
        Ok(Outputs { files, gate: a.gate() })
    }

    /// Writes what was measured (even a partial run), prints the verdict and
    /// turns wrong bytes into a failing exit status.
    fn conclude(self, report: Option<RunReport>, result: Result<()>, screen: &Screen) -> Result<()> {
        let Some(mut report) = report else {
            for (path, _, _) in &self.files {
                let _ = std::fs::remove_file(path);
            }
            return result;
        };
        report.close(result.as_ref().err());
        if result.is_ok() && !self.gate.is_empty() {
            report.gate = Some(self.gate.judge(&report));
        }
        screen.footer(&report)?;
        for (path, mut f, exporter) in self.files {
            exporter.export(&report, &mut f).map_err(|e| e.context(format!("writing {}", path.display())))?;
        }
        result?;
        if report.wrong_bytes > 0 {
            return Err(Error::integrity(format!(
                "{} wrong bytes in {} verified; first: {}",
                report.wrong_bytes,
                fmt_bytes(report.verified_bytes),
                report.first_wrong().unwrap_or("?")
            )));
        }
        match report.gate.as_ref().and_then(|g| g.error()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
