//! One error type for the whole flow. Its kind decides the process exit code,
//! so scripts can tell bad input from a broken peer from corrupted data.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad command-line value, unknown model, unreadable or incomplete config.
    Usage,
    /// Anything that went wrong while running: peer lost, refused, timed out, I/O.
    Run,
    /// Bytes arrived wrong, or a message arrived under an unexpected key.
    Integrity,
    /// A run completed but missed a deployment gate (reserved for `--min-gbps`).
    Gate,
    /// SIGINT, SIGTERM or SIGHUP stopped the run (see `signals`).
    Interrupted,
}

impl ErrorKind {
    /// The kind a kvxfer process's exit status stands for (a child's).
    pub fn of_exit_code(code: i32) -> ErrorKind {
        match code {
            2 => ErrorKind::Usage,
            3 => ErrorKind::Integrity,
            4 => ErrorKind::Gate,
            129 | 130 | 143 => ErrorKind::Interrupted,
            _ => ErrorKind::Run,
        }
    }

    /// How a kvxfer process this one started ended, where not well: the
    /// kind its exit stands for, and the words ("exited with status 3",
    /// "was ended by SIGABRT").
    pub fn of_child(status: std::process::ExitStatus) -> Option<(ErrorKind, String)> {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(0), _) => None,
            (Some(code), _) => Some((ErrorKind::of_exit_code(code), format!("exited with status {code}"))),
            (None, Some(sig)) => {
                Some((ErrorKind::Run, format!("was ended by {}", crate::signals::name(sig))))
            }
            (None, None) => Some((ErrorKind::Run, format!("ended: {status}"))),
        }
    }

    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Run => 1,
            ErrorKind::Usage => 2,
            ErrorKind::Integrity => 3,
            ErrorKind::Gate => 4,
            // 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP, as a shell reports them.
            ErrorKind::Interrupted => 128 + crate::signals::received().unwrap_or(libc::SIGINT),
        }
    }
}

/// Who the error comes from, which decides who explains it to whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Found here: bad bytes, a silent peer, bad input. Tell the peer at once.
    Here,
    /// The peer's own abort or refusal, received over the control connection.
    Peer,
    /// A connection dropped: often only the echo of the peer's abort, whose
    /// reason is worth waiting a moment for.
    Lost,
}

#[derive(Debug, Clone)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    pub origin: Origin,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), origin: Origin::Here }
    }
    pub fn reported_by_peer(mut self) -> Self {
        self.origin = Origin::Peer;
        self
    }
    /// The connection to the peer dropped (end of stream, reset, broken pipe).
    pub fn connection_lost(message: impl Into<String>) -> Self {
        Error { origin: Origin::Lost, ..Self::run(message) }
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Usage, message)
    }
    pub fn run(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Run, message)
    }
    pub fn integrity(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Integrity, message)
    }
    /// The operator's signal stopped the run here.
    pub fn interrupted(sig: i32) -> Self {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        Self::new(ErrorKind::Interrupted, format!("interrupted on {host} ({})", crate::signals::name(sig)))
    }
    pub fn exit_code(&self) -> i32 {
        self.kind.exit_code()
    }
    /// Prefix the message with what was being done, keeping the kind.
    pub fn context(self, what: impl fmt::Display) -> Self {
        Error { message: format!("{what}: {}", self.message), ..self }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::run(e.to_string())
    }
}

/// `.context("while doing X")` on any result whose error converts into ours.
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T>;
    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(what))
    }
    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| e.into().context(what()))
    }
}
