//! File-system helpers shared by the segment store, the cursor and the dead
//! letters: the journal's error for an I/O failure, and the directory fsync
//! that makes creates, renames and deletes durable.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use super::Error;

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
