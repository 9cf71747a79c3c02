//! Keys: one record's identity in a dataset (DESIGN.md §1), and the
//! derivations of a key from what the servers return.

use serde::{Deserialize, Serialize};

use super::Dataset;

/// A record's identity in a dataset (DESIGN.md §1).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "dataset")]
pub enum Key {
    /// A client registration.
    #[serde(rename = "clients")]
    Client {
        /// The `client_id`.
        client_id: String,
    },
    /// A long-lived authorization, keyed by subject and client.
    #[serde(rename = "authorizations")]
    Authorization {
        /// The subject.
        subject: String,
        /// The client.
        client_id: String,
    },
    /// A subject session.
    #[serde(rename = "sessions")]
    Session {
        /// The full SID (key, `.`, HMAC): needed to read the session.
        sid: String,
    },
}

impl Key {
    /// The dataset name.
    pub fn dataset(&self) -> Dataset {
        match self {
            Self::Client { .. } => Dataset::Clients,
            Self::Authorization { .. } => Dataset::Authorizations,
            Self::Session { .. } => Dataset::Sessions,
        }
    }

    /// The key of a record in an export of `dataset`: sessions are keyed by
    /// their SID (`member_key`, the export being an object), clients by
    /// `client_id`, authorizations by `sub` + `cid`. `None` for a record
    /// without a usable key.
    pub(crate) fn from_export_member(
        dataset: Dataset,
        member_key: Option<&str>,
        value: &[u8],
    ) -> Option<Self> {
        use serde::Deserialize;

        match dataset {
            Dataset::Sessions => Some(Self::Session {
                sid: member_key?.to_owned(),
            }),
            Dataset::Clients => {
                #[derive(Deserialize)]
                struct Client {
                    client_id: String,
                }
                let client: Client = serde_json::from_slice(value).ok()?;
                Some(Self::Client {
                    client_id: client.client_id,
                })
            }
            _ => {
                #[derive(Deserialize)]
                struct Authorization {
                    sub: String,
                    cid: String,
                }
                let record: Authorization = serde_json::from_slice(value).ok()?;
                Some(Self::Authorization {
                    subject: record.sub,
                    client_id: record.cid,
                })
            }
        }
    }

    /// The key of an authorization record as the authz-store returns it
    /// (`sub` + `cid`).
    pub(crate) fn of_authorization(record: &serde_json::Value) -> Option<Self> {
        Some(Self::Authorization {
            subject: record.get("sub")?.as_str()?.to_owned(),
            client_id: record.get("cid")?.as_str()?.to_owned(),
        })
    }

    /// The identity used to coalesce work on one record: for sessions the
    /// SID key, since two SIDs with the same key are the same session.
    pub(crate) fn identity(&self) -> String {
        match self {
            Self::Client { client_id } => format!("client:{client_id}"),
            Self::Authorization { subject, client_id } => format!("authz:{subject}|{client_id}"),
            Self::Session { sid } => format!("session:{}", sid_key(sid)),
        }
    }

    /// A form safe for logs: session identifiers are secrets (a SID is a
    /// browser cookie), so only a short prefix of the key is shown.
    pub(crate) fn redacted(&self) -> String {
        match self {
            Self::Session { sid } => {
                let key = sid_key(sid);
                let prefix: String = key.chars().take(6).collect();
                format!("session:{prefix}…")
            }
            other => other.identity(),
        }
    }
}

/// The SID key: the SID up to its last `.` (the rest is the HMAC).
pub fn sid_key(sid: &str) -> &str {
    sid.rsplit_once('.').map_or(sid, |(key, _)| key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_records() {
        assert_eq!(
            Key::from_export_member(
                Dataset::Clients,
                None,
                br#"{"client_id":"abc","client_secret":"s"}"#
            ),
            Some(Key::Client {
                client_id: "abc".into()
            })
        );
        assert_eq!(
            Key::from_export_member(
                Dataset::Authorizations,
                None,
                br#"{"sub":"alice","cid":"abc","scp":["openid"]}"#
            ),
            Some(Key::Authorization {
                subject: "alice".into(),
                client_id: "abc".into()
            })
        );
        assert_eq!(
            Key::from_export_member(Dataset::Sessions, Some("K.H"), br#"{"sub":"alice"}"#),
            Some(Key::Session { sid: "K.H".into() })
        );
        assert_eq!(
            Key::from_export_member(Dataset::Clients, None, br#"{"client_name":"x"}"#),
            None
        );
    }
}
