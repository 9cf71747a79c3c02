//! File-system helpers shared by the segment store, the cursor and the dead
//! letters: the journal's error for an I/O failure, the directory fsync
//! that makes creates, renames and deletes durable, and the owner-only
//! permissions of everything created in the journal directory.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::Error;

/// A failure-injection seam: while [`Faults::set_disk_full`] is on, every
/// segment write fails as a full disk fails it (`ENOSPC`), through the same
/// error and roll-back path. For tests and rehearsals of the disk-full
/// runbook; a fresh `Faults` (the default) never fires. Clones share the
/// switch.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<AtomicBool>);

impl Faults {
    /// Makes every journal write fail (`true`) or succeed again.
    pub fn set_disk_full(&self, full: bool) {
        self.0.store(full, Ordering::Release);
    }

    /// Whether writes fail now.
    pub fn disk_full(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// The error a write gets while the disk is "full".
    pub(super) fn check_write(&self) -> io::Result<()> {
        if self.disk_full() {
            Err(io::Error::from_raw_os_error(28)) // ENOSPC
        } else {
            Ok(())
        }
    }
}

impl PartialEq for Faults {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Faults {}

/// Permission bits of every file created in the journal directory (the
/// journal, its cursor, the dead letters, checkpoints, the phase): owner
/// only. Payloads are encrypted, but the keys, sizes and timing of changes
/// are nobody else's business, and the umask must not decide.
pub const FILE_MODE: u32 = 0o600;

/// Permission bits of every directory created for the journal.
pub const DIR_MODE: u32 = 0o700;

/// `OpenOptions` that create files with [`FILE_MODE`].
pub fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    options
}

/// Creates `dir` and its missing parents with [`DIR_MODE`].
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(dir)
}

/// Replaces `path` with `bytes` atomically and durably: an owner-only temp
/// file beside it (`temp`), written and fdatasynced, renamed over `path`,
/// then the directory fsynced. A crash leaves the old content or the new,
/// never a mix. The small state files (phase, checkpoints, control) all
/// go through here.
pub fn replace_file(path: &Path, temp: &Path, bytes: &[u8]) -> io::Result<()> {
    use io::Write as _;
    let mut file = private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(temp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    std::fs::rename(temp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Builds an [`Error::Io`].
pub(super) fn io_error(op: &'static str, path: &Path, err: io::Error) -> Error {
    Error::Io {
        op,
        path: path.to_path_buf(),
        source: Arc::new(err),
    }
}

/// fsyncs a directory, so that creates, renames and deletes inside it are
/// durable (a file's own fsync does not cover its directory entry).
pub(super) fn fsync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|err| io_error("sync directory", dir, err))
}
