//! Reading a file a user names (a trace, a model config, a report): only a
//! regular file, and only up to a size, so that /dev/zero, a FIFO with no
//! writer or a folder is an error naming it, not an endless read or wait.

use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// The largest trace or report kvxfer reads: a million-line trace is 25 MB.
pub const MOST_BYTES: u64 = 1 << 30;

/// What a path is where it is not a regular file (outputs are checked too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotAFile {
    Folder,
    Fifo,
    Device,
    Other,
}

impl std::fmt::Display for NotAFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotAFile::Folder => "a folder",
            NotAFile::Fifo => "a FIFO",
            NotAFile::Device => "a device",
            NotAFile::Other => "not a regular file",
        })
    }
}

pub fn not_a_file(meta: &std::fs::Metadata) -> Option<NotAFile> {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    Some(match () {
        _ if kind.is_file() => return None,
        _ if kind.is_dir() => NotAFile::Folder,
        _ if kind.is_fifo() => NotAFile::Fifo,
        _ if kind.is_char_device() || kind.is_block_device() => NotAFile::Device,
        _ => NotAFile::Other,
    })
}

/// The text of `path`, which `what` names in errors ("--arrivals trace:X").
pub fn read_text(path: &Path, what: &str, most: u64) -> Result<String> {
    let cannot = |why: String| Error::usage(format!("{what}: cannot read {}: {why}", path.display()));
    // Look before opening: opening a FIFO waits for a writer.
    let meta = std::fs::metadata(path).map_err(|e| cannot(e.to_string()))?;
    if let Some(is) = not_a_file(&meta) {
        return Err(cannot(format!("it is {is}; give a file")));
    }
    if meta.len() > most {
        return Err(cannot(format!("{} bytes, more than the {most} kvxfer reads", meta.len())));
    }
    let mut text = String::new();
    // A file that grows while read stops at the bound too.
    std::fs::File::open(path)
        .and_then(|f| f.take(most + 1).read_to_string(&mut text))
        .map_err(|e| cannot(e.to_string()))?;
    if text.len() as u64 > most {
        return Err(cannot(format!("more than the {most} bytes kvxfer reads")));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_a_bounded_size_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.csv");
        std::fs::write(&file, "0,64\n").unwrap();
        assert_eq!(read_text(&file, "trace", 100).unwrap(), "0,64\n");
        let e = read_text(&file, "trace", 3).unwrap_err().message;
        assert!(e.contains("5 bytes, more than the 3 kvxfer reads"), "{e}");
        assert!(read_text(dir.path(), "x", 100).unwrap_err().message.contains("it is a folder"));
        let dev = read_text(Path::new("/dev/zero"), "--model-config", 100).unwrap_err().message;
        assert!(dev.contains("--model-config: cannot read /dev/zero: it is a device"), "{dev}");
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(read_text(&fifo, "x", 100).unwrap_err().message.contains("it is a FIFO"));
        assert!(read_text(&dir.path().join("none"), "x", 100).is_err());
    }
}
