//! `kvxfer launch`: a pair started the way clusters start jobs, by mpirun
//! (Open MPI, installed by scripts/test.sh) or by a launcher's variables.

mod common;
use common::*;
use std::process::{Command, Stdio};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A process with a launcher's variables set, as srun would start it.
fn rank(vars: &[(&str, String)], args: &[&str]) -> std::process::Child {
    let mut c = Command::new(KVXFER);
    c.arg("launch").args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in vars {
        c.env(k, v);
    }
    // The test may itself run under a launcher: only the given variables count.
    for k in ["OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE"] {
        if !vars.iter().any(|(n, _)| *n == k) {
            c.env_remove(k);
        }
    }
    c.spawn().unwrap()
}

fn finish(child: std::process::Child) -> (Option<i32>, String, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `mpirun -np N kvxfer launch ARGS`; fails the test unless every rank
/// succeeds; returns their stdout and stderr.
fn mpirun(np: u32, args: &[&str]) -> (String, String) {
    let mpirun =
        ["/usr/bin/mpirun", "/usr/local/bin/mpirun"].into_iter().find(|p| std::path::Path::new(p).exists());
    let mpirun = mpirun.expect("mpirun not found: scripts/test.sh installs openmpi-bin");
    let out = Command::new(mpirun)
        .args(["-np", &np.to_string(), "--oversubscribe", "--allow-run-as-root", KVXFER, "launch"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "mpirun failed:\n{stdout}\n{stderr}");
    (stdout.into_owned(), stderr.into_owned())
}

#[test]
fn mpirun_starts_a_pair_that_measures_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("r.json");
    let rv = format!("127.0.0.1:{}", free_port());
    let (stdout, _) = mpirun(
        2,
        &[
            &[
                "--rendezvous",
                rv.as_str(),
                "-p",
                "128,1024",
                "-g",
                "request,layer",
                "-n",
                "3",
                "--timeout",
                "20s",
            ][..],
            &["--json", j.to_str().unwrap()],
        ]
        .concat(),
    );
    // One table (rank 0, the sender), four rows; the receiver keeps quiet.
    assert_eq!(stdout.matches("# integrity  0 wrong bytes").count(), 1, "{stdout}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("  request") || l.starts_with("    layer")).count(),
        4
    );
    assert_sane(&json(&j), 4);
}

#[test]
fn launcher_variables_alone_make_a_pair_and_roles_can_swap() {
    let rv = format!("127.0.0.1:{}", free_port());
    let slurm = |r: u32| vec![("SLURM_PROCID", r.to_string()), ("SLURM_NTASKS", "2".to_string())];
    let args =
        ["--rendezvous", rv.as_str(), "-p", "64", "-n", "2", "--roles", "recv,send", "--timeout", "20s"];
    let (r0, r1) = (rank(&slurm(0), &args), rank(&slurm(1), &args));
    let (c1, out1, err1) = finish(r1);
    let (c0, out0, err0) = finish(r0);
    assert_eq!((c0, c1), (Some(0), Some(0)), "{err0}\n{err1}");
    // Rank 1 sends here, so it prints; rank 0 receives quietly.
    assert!(out1.contains("# integrity  0 wrong bytes") && out0.is_empty(), "{out0}\n---\n{out1}");
    assert!(err0.contains("listening on [::]:") || err0.contains("listening on 0.0.0.0:"), "{err0}");
}

#[test]
fn mpirun_starts_two_senders_into_one_receiver() {
    let rv = format!("127.0.0.1:{}", free_port());
    let (stdout, _) =
        mpirun(3, &["--rendezvous", rv.as_str(), "-p", "128,1024", "-n", "3", "--timeout", "20s"]);
    // Each sender prints its own pair; the receiver (rank 2) holds the aggregate, quietly.
    assert_eq!(stdout.matches("# integrity  0 wrong bytes").count(), 2, "{stdout}");
    assert_eq!(stdout.matches("many-to-one, 2→1): this pair's own figures").count(), 2, "{stdout}");
}

#[test]
fn launcher_variables_make_a_one_to_many_fan() {
    let (p0, p1) = (free_port(), free_port());
    let rv = format!("127.0.0.1:{p0},127.0.0.1:{p1}");
    let slurm = |r: u32| vec![("SLURM_PROCID", r.to_string()), ("SLURM_NTASKS", "3".to_string())];
    let args =
        ["--rendezvous", rv.as_str(), "-p", "64", "-n", "2", "--roles", "recv,send,recv", "--timeout", "20s"];
    let ranks: Vec<_> = (0..3).map(|r| rank(&slurm(r), &args)).collect();
    let done: Vec<_> = ranks.into_iter().map(finish).collect();
    for (code, _, err) in &done {
        assert_eq!(*code, Some(0), "{err}");
    }
    assert!(done[1].1.contains("# fan        one-to-many (1→2): 2 receivers"), "{}", done[1].1);
    // Each receiving rank listens on its own rendezvous port.
    for (r, port) in [(0, p0), (2, p1)] {
        let err = &done[r].2;
        assert!(err.contains(&format!("[::]:{port}")) || err.contains(&format!("0.0.0.0:{port}")), "{err}");
    }
}

#[test]
fn launch_refuses_what_it_cannot_pair() {
    let rv = "127.0.0.1:9";
    let four = vec![("PMI_RANK", "0".to_string()), ("PMI_SIZE", "4".to_string())];
    let (code, _, err) = finish(rank(&four, &["--rendezvous", rv, "--roles", "send,send,recv,recv"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("PMI: --roles gives 2 senders and 2 receivers"), "{err}");
    let (code, _, err) = finish(rank(&[], &["--rendezvous", rv]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("started by a launcher"), "{err}");
    let three = vec![("PMI_RANK", "0".to_string()), ("PMI_SIZE", "3".to_string())];
    let (code, _, err) = finish(rank(&three, &["--rendezvous", rv, "--roles", "send,recv,recv"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--rendezvous names 1 addresses for 2 receiving ranks"), "{err}");
}

/// Built with `--features mpi`: no --rendezvous, MPI broadcasts the
/// receiver's host and port (scripts/test.sh runs this with the feature).
#[cfg(feature = "mpi")]
#[test]
fn mpi_finds_the_rendezvous_itself() {
    let (stdout, stderr) = mpirun(2, &["-p", "64", "-n", "2", "--roles", "recv,send", "--timeout", "20s"]);
    assert_eq!(stdout.matches("# integrity  0 wrong bytes").count(), 1, "{stdout}");
    // The receiver listened on a port of its own choosing.
    assert!(stderr.contains("listening on [::]:") || stderr.contains("listening on 0.0.0.0:"), "{stderr}");
}

/// With the feature, MPI gathers every receiver's address: one sender
/// finds both of its receivers.
#[cfg(feature = "mpi")]
#[test]
fn mpi_finds_every_receiver_of_a_fan() {
    let (stdout, _) = mpirun(3, &["-p", "64", "-n", "2", "--roles", "send,recv,recv", "--timeout", "20s"]);
    assert!(stdout.contains("# fan        one-to-many (1→2): 2 receivers"), "{stdout}");
    assert_eq!(stdout.matches("# integrity  0 wrong bytes").count(), 1, "{stdout}");
}

#[test]
fn mpirun_starts_prefill_and_decode_at_different_tp() {
    // Prefill TP 1 into decode TP 2: rank 0 sends each decode rank its heads.
    let rv = format!("127.0.0.1:{},127.0.0.1:{}", free_port(), free_port());
    let tp = ["--prefill-tp", "1", "--decode-tp", "2", "--kv-layout", "nhd"];
    let work = ["-m", "llama-3.1-8b", "-p", "32", "-g", "block", "-n", "2", "--timeout", "20s"];
    let (stdout, _) = mpirun(3, &[&["--rendezvous", rv.as_str()][..], &tp, &work].concat());
    assert!(stdout.contains("# tp         prefill TP 1 -> decode TP 2 (nhd, tp_ratio 2)"), "{stdout}");
    assert!(stdout.contains("prefill rank 0 -> decode rank 1: heads 4..7"), "{stdout}");
    assert_eq!(stdout.matches("# integrity  0 wrong bytes").count(), 1, "{stdout}");
    // Prefill TP 2 into decode TP 1: both prefill ranks into one decode rank.
    let rv = format!("127.0.0.1:{}", free_port());
    let tp = ["--prefill-tp", "2", "--decode-tp", "1"];
    let (stdout, _) = mpirun(3, &[&["--rendezvous", rv.as_str()][..], &tp, &work].concat());
    assert_eq!(stdout.matches("# integrity  0 wrong bytes").count(), 2, "{stdout}");
    assert!(stdout.contains("prefill rank 1 -> decode rank 0: heads 4..7"), "{stdout}");
}
