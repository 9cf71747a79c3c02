//! A dataset export streamed record by record: the one reader of the
//! primary's exports (`GET /clients`, `GET /authz-store/rest/v3/
//! authorizations`, `GET /session-store/rest/v2/sessions`), shared by the
//! backfill, its count pass and verify.
//!
//! Each export is one huge JSON document (an array, or for sessions an
//! object keyed by SID), split incrementally as it arrives: memory stays
//! flat at any size. [`Export::next`] is cancel-safe (the splitter's state
//! lives here, not in the future), so callers `select!` it against their
//! stop token.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::ApiError;
use super::connect2id::Connect2id;
use crate::json_stream::{Container, DEFAULT_MAX_MEMBER_BYTES, Member, Splitter};
use crate::model::{Dataset, Key, Side};

/// Why an export could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The export request failed.
    #[error("export of {dataset} from {side}: {source}")]
    Request {
        /// The dataset.
        dataset: Dataset,
        /// The server.
        side: Side,
        /// What failed.
        source: ApiError,
    },
    /// The stream broke or is not the expected JSON.
    #[error("export of {dataset} from {side} broke: {message}")]
    Broken {
        /// The dataset.
        dataset: Dataset,
        /// The server.
        side: Side,
        /// What went wrong.
        message: String,
    },
}

/// One exported record.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    /// Its key, when the record has a usable one.
    pub key: Option<Key>,
    /// Its JSON text, as exported.
    pub json: Bytes,
}

/// An export being read.
#[derive(Debug)]
pub(crate) struct Export {
    dataset: Dataset,
    side: Side,
    body: Incoming,
    splitter: Splitter,
    members: Vec<Member>,
    ended: bool,
}

impl Export {
    /// Starts the export of `dataset` at `server`.
    pub(crate) async fn open(server: &Connect2id, dataset: Dataset) -> Result<Self, Error> {
        let body = server
            .export(dataset)
            .await
            .map_err(|source| Error::Request {
                dataset,
                side: server.server(),
                source,
            })?;
        // Sessions are exported as an object keyed by SID.
        let container = if dataset == Dataset::Sessions {
            Container::Object
        } else {
            Container::Array
        };
        Ok(Self {
            dataset,
            side: server.server(),
            body,
            splitter: Splitter::new(container, DEFAULT_MAX_MEMBER_BYTES),
            members: Vec::new(),
            ended: false,
        })
    }

    /// The next records as they arrive (at least one), or `None` at the
    /// end of a complete document. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Result<Option<Vec<Record>>, Error> {
        loop {
            if !self.members.is_empty() {
                let dataset = self.dataset;
                return Ok(Some(
                    self.members
                        .drain(..)
                        .map(|member| Record {
                            key: Key::from_export_member(
                                dataset,
                                member.key.as_deref(),
                                &member.value,
                            ),
                            json: member.value,
                        })
                        .collect(),
                ));
            }
            if self.ended {
                return Ok(None);
            }
            match self.body.frame().await {
                None => {
                    self.ended = true;
                    self.splitter
                        .finish()
                        .map_err(|err| self.broken(err.to_string()))?;
                }
                Some(Err(err)) => return Err(self.broken(err.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(bytes) = frame.into_data() {
                        self.splitter
                            .feed(&bytes, &mut self.members)
                            .map_err(|err| self.broken(err.to_string()))?;
                    }
                }
            }
        }
    }

    fn broken(&self, message: String) -> Error {
        Error::Broken {
            dataset: self.dataset,
            side: self.side,
            message,
        }
    }
}
