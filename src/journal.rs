//! The journal: the durable, ordered record of changes that must reach the
//! secondary (DESIGN.md §2 step 2, §4). Work in progress: record framing and
//! at-rest encryption so far.

mod cipher;
pub mod record;

pub use cipher::{Cipher, CipherError, KEY_LEN, KeyError};
pub use record::{EncodeError, FrameError};
