//! Datasets (DESIGN.md §1): the kinds of record the migration copies.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A dataset. Declared in alphabetical order: the admin API's maps keyed by
/// dataset are sorted by name, as they were when the keys were strings
/// (pinned by `tests/golden.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dataset {
    /// Long-lived authorizations (the authz-store), keyed by subject and
    /// client.
    Authorizations,
    /// Client registrations, keyed by `client_id`.
    Clients,
    /// Subject (SSO) sessions, keyed by SID.
    Sessions,
    /// Token values at an Authlete target (from token responses).
    Tokens,
}

impl Dataset {
    /// Every dataset.
    pub const ALL: [Self; 4] = [
        Self::Authorizations,
        Self::Clients,
        Self::Sessions,
        Self::Tokens,
    ];
    /// What a Connect2id target syncs, in the migration guide's order.
    pub(crate) const CONNECT2ID: [Self; 3] = [Self::Clients, Self::Authorizations, Self::Sessions];
    /// What an Authlete target syncs: it has no authorization records or
    /// subject sessions (the new authorization server keeps its own).
    pub const AUTHLETE: [Self; 2] = [Self::Clients, Self::Tokens];

    /// The name in config, logs, metrics and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorizations => "authorizations",
            Self::Clients => "clients",
            Self::Sessions => "sessions",
            Self::Tokens => "tokens",
        }
    }

    /// A record of this dataset with the fields that legitimately differ
    /// between servers removed, for comparison.
    pub fn comparable(self, record: &serde_json::Value) -> serde_json::Value {
        let ignored = IGNORED_FIELDS
            .iter()
            .find(|(dataset, _)| *dataset == self)
            .map_or(&[][..], |(_, fields)| *fields);
        match record {
            serde_json::Value::Object(fields) => serde_json::Value::Object(
                fields
                    .iter()
                    .filter(|(name, _)| !ignored.contains(&name.as_str()))
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// Fields that legitimately differ between two servers holding the same
/// record: regenerated on import, rebuilt from the issuer, or touched by
/// reads.
const IGNORED_FIELDS: &[(Dataset, &[&str])] = &[
    (
        Dataset::Clients,
        &[
            "client_id_issued_at",
            "registration_access_token",
            "registration_client_uri",
            // Set by each server from its own secret lifetime setting.
            "client_secret_expires_at",
        ],
    ),
    (Dataset::Authorizations, &["rft"]),
    (Dataset::Sessions, &["last_used", "lut", "last_used_time"]),
];

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A dataset is its name: maps keyed by dataset can be read with a name
/// (`report.datasets["clients"]`). Sound because the variants are declared
/// in alphabetical order, so `Ord` and `Eq` agree with the names'.
impl std::borrow::Borrow<str> for Dataset {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// A name that is no dataset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a dataset (clients, authorizations, sessions, tokens)")]
pub struct UnknownDataset(pub String);

impl FromStr for Dataset {
    type Err = UnknownDataset;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "authorizations" => Ok(Self::Authorizations),
            "clients" => Ok(Self::Clients),
            "sessions" => Ok(Self::Sessions),
            "tokens" => Ok(Self::Tokens),
            other => Err(UnknownDataset(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_alphabetically() {
        for dataset in [
            Dataset::Authorizations,
            Dataset::Clients,
            Dataset::Sessions,
            Dataset::Tokens,
        ] {
            assert_eq!(dataset.as_str().parse::<Dataset>(), Ok(dataset));
            assert_eq!(
                serde_json::to_value(dataset).unwrap(),
                serde_json::json!(dataset.as_str())
            );
        }
        let mut names = Dataset::CONNECT2ID.map(Dataset::as_str);
        names.sort_unstable();
        let mut sorted = Dataset::CONNECT2ID;
        sorted.sort_unstable();
        assert_eq!(names, sorted.map(Dataset::as_str));
        assert!("nope".parse::<Dataset>().is_err());
        // Tables pad the name.
        assert_eq!(format!("{:<9}|", Dataset::Clients), "clients  |");
        // Borrow<str> needs Ord to agree with the names' order.
        let all = [
            Dataset::Authorizations,
            Dataset::Clients,
            Dataset::Sessions,
            Dataset::Tokens,
        ];
        for a in all {
            for b in all {
                assert_eq!(a.cmp(&b), a.as_str().cmp(b.as_str()));
            }
        }
    }
}
