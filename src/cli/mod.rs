//! The commands: `plan` (no hardware), `send` and `recv` (one side each, also
//! the `kvxfer-send` and `kvxfer-recv` binaries) and `pair` (both sides on
//! this host over loopback).

pub mod args;
mod compare;
mod doctor;
mod fan;
mod groups;
mod launch;
mod links;
mod matrix;
#[cfg(feature = "mpi")]
mod mpi_boot;
mod outputs;
mod pair;
mod plan;
mod recv;
mod rounds;
mod send;
mod service;
mod size;
mod tp_plan;
pub(crate) mod turns;

use compare::compare;
use launch::launch;
use links::links;
use outputs::{screen_for, sender_options, Outputs};
use pair::pair;
use plan::plan;
use recv::{receiver_side, recv, recv_on, serve_one};
use send::send;

use crate::env::EnvInfo;
use crate::error::{Error, Result};
use crate::gpu;
use crate::kv::presets;
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
    CompareArgs, DoctorArgs, LaunchArgs, LogArgs, MatrixArgs, OutputArgs, PairArgs, PlanArgs, RecvArgs,
    ReportArgs, RunArgs, SendArgs, SizeArgs,
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
    /// Transports in alternation over rounds, each point's median with its interval and the ratios
    Compare(CompareArgs),
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
    if checking_only() {
        let run = match &cli.command {
            Command::Pair(a) => Some(&a.run),
            Command::Send(a) => Some(&a.run),
            Command::Launch(a) => Some(&a.run),
            Command::Matrix(a) => Some(&a.run),
            // They move nothing: checked by running them.
            Command::Plan(a) => exit_with("kvxfer", plan(a)),
            Command::Size(a) => exit_with("kvxfer", size::run(a)),
            _ => None,
        };
        exit_with("kvxfer", check_run(run));
    }
    exit_with(
        "kvxfer",
        match cli.command {
            Command::Plan(a) => plan(&a),
            Command::Size(a) => size::run(&a),
            Command::Report(a) => compare(&a),
            Command::Compare(a) => rounds::compare_rounds(&a),
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
    if checking_only() {
        exit_with("kvxfer-send", check_run(Some(&cli.args.run)));
    }
    exit_with("kvxfer-send", send(&cli.args))
}

pub fn main_recv() -> ! {
    crate::signals::install();
    let cli: RecvCli = parse_args("kvxfer-recv");
    crate::logging::init(cli.log.verbose);
    if checking_only() {
        exit_with("kvxfer-recv", check_run(None));
    }
    exit_with("kvxfer-recv", recv(&cli.args))
}

/// KVXFER_CHECK_ARGS=1: check a command line and run nothing (the docs'
/// commands that need GPUs or other hosts are checked so in CI).
fn checking_only() -> bool {
    std::env::var_os("KVXFER_CHECK_ARGS").is_some_and(|v| v == "1")
}

/// A command line that parsed, checked as far as it can be without running:
/// a sender's plan and gate.
fn check_run(run: Option<&RunArgs>) -> Result<()> {
    if let Some(run) = run {
        run.check_gate(&run.plan()?)?;
    }
    eprintln!("kvxfer: the command line holds (KVXFER_CHECK_ARGS=1: nothing run)");
    Ok(())
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
