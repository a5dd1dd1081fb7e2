//! The small files weft is pointed at by path (subnet.env, the state file, the etcd TLS
//! files): read only when they are regular files, never more than a bound, and written
//! atomically.
//!
//! A path given on the command line may name anything: a FIFO (opening it for reading waits
//! for a writer, for ever), a device (`/dev/zero` never ends), a directory. Such a path is
//! refused with what it is instead of hanging the start or filling the memory.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Opening or reading it failed (it is missing, unreadable ...).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// It is something else than a regular file.
    #[error("is a {kind}, not a regular file")]
    NotRegular {
        /// What it is: `FIFO`, `character device`, `directory` ...
        kind: &'static str,
    },
    /// It is larger than any file of its kind.
    #[error("is larger than {limit} bytes")]
    TooLarge {
        /// The most bytes read.
        limit: u64,
    },
}

impl FileError {
    /// Whether the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// What a file type is, in words; `None` for a regular file.
pub fn kind_of(t: std::fs::FileType) -> Option<&'static str> {
    let kind = if t.is_file() {
        return None;
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    };
    Some(kind)
}

/// Reads the regular file at `path` (symbolic links followed), at most `limit` bytes.
/// Anything else is refused: what `path` names is looked at first (so a device is never
/// opened), the file is opened with O_NONBLOCK (so a FIFO put there meanwhile does not wait
/// for a writer), and what was opened is checked again on the descriptor.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    if let Some(kind) = kind_of(std::fs::metadata(path)?.file_type()) {
        return Err(FileError::NotRegular { kind });
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if let Some(kind) = kind_of(f.metadata()?.file_type()) {
        return Err(FileError::NotRegular { kind });
    }
    let mut bytes = Vec::new();
    f.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge { limit });
    }
    Ok(bytes)
}

/// Writes `bytes` to `path` so that a reader (or a crash) sees the old contents or the new,
/// never a part: a new temporary file in the same directory (created with it if needed),
/// flushed to disk, then renamed over `path`. The temporary file goes on failure.
///
/// The rename replaces the directory entry `path`, whatever it was: a FIFO, a device node or
/// a symbolic link there is replaced by the regular file (nothing is written into it or
/// where it points), as flanneld's own rename does. A directory there is an error.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let (tmp, mut file) = tempfile_in(dir, path)?;
    let res = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Creates a uniquely named temporary file next to `target`.
fn tempfile_in(dir: &Path, target: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let base = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "subnet.env".into());
    for attempt in 0..100u32 {
        let p = dir.join(format!(".{base}.{}.{attempt}.tmp", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "no free temporary file name",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    #[test]
    fn only_regular_files_are_read_and_only_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_regular(&file, 5).unwrap(), b"12345");
        assert!(matches!(
            read_regular(&file, 4),
            Err(FileError::TooLarge { limit: 4 })
        ));
        // A FIFO: refused at once (no writer is waited for).
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let e = read_regular(&fifo, 1 << 16).unwrap_err();
        assert_eq!(e.to_string(), "is a FIFO, not a regular file");
        // A symbolic link to a device: what it points to counts; /dev/zero is never read.
        let link = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let e = read_regular(&link, 1 << 16).unwrap_err();
        assert_eq!(e.to_string(), "is a character device, not a regular file");
        let e = read_regular(dir.path(), 1 << 16).unwrap_err();
        assert_eq!(e.to_string(), "is a directory, not a regular file");
        let e = read_regular(&dir.path().join("missing"), 1).unwrap_err();
        assert!(e.is_not_found(), "{e:?}");
        assert!(!FileError::TooLarge { limit: 1 }.is_not_found());
    }

    #[test]
    fn a_fifo_or_a_link_is_replaced_by_the_written_file() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("subnet.env");
        mkfifo(&fifo);
        write_atomically(&fifo, b"A=1\n").unwrap();
        assert_eq!(read_regular(&fifo, 16).unwrap(), b"A=1\n");
        // The link is replaced, not written through.
        let target = dir.path().join("target");
        std::fs::write(&target, b"old").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomically(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(std::fs::read(&link).unwrap(), b"new");
        // A directory is not replaced.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(write_atomically(&sub, b"x").is_err());
        assert!(sub.is_dir());
        // No temporary file is left behind.
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["link", "sub", "subnet.env", "target"]);
    }
}
