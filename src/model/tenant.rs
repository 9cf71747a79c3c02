//! The issuer a Connect2id management call is routed to: the multi-tenant
//! edition selects a tenant by `Tenant-ID`, and a server with issuer
//! aliases (RN 12.3) selects one by `Issuer` (spec §1.3). A trigger that
//! carried either header changed state in that issuer only, so the sync
//! reads and writes it with the same header (domain-gaps Q1.21).

use http::HeaderMap;
use serde::{Deserialize, Serialize};

/// `Tenant-ID`, lower-case as `http` spells header names.
const TENANT_ID: &str = "tenant-id";
/// `Issuer`.
const ISSUER: &str = "issuer";

/// The routing headers of one request; at least one is set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tenant {
    /// `Tenant-ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// `Issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

impl Tenant {
    /// The multi-tenant edition's tenant `id`.
    pub fn id(id: impl Into<String>) -> Self {
        Self {
            tenant_id: Some(id.into()),
            issuer: None,
        }
    }

    /// The routing headers of a request, if it has any (values that are
    /// not visible ASCII are ignored: no server routes by them).
    pub fn of_headers(headers: &HeaderMap) -> Option<Self> {
        let value = |name| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::trim)
                .filter(|value| !value.is_empty())
                .map(str::to_owned)
        };
        let tenant = Self {
            tenant_id: value(TENANT_ID),
            issuer: value(ISSUER),
        };
        (tenant.tenant_id.is_some() || tenant.issuer.is_some()).then_some(tenant)
    }

    /// The headers to send, as (name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            (TENANT_ID, self.tenant_id.as_deref()),
            (ISSUER, self.issuer.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }

    /// A short name for lanes and logs (`tenant acme`, `issuer https://…`).
    pub fn label(&self) -> String {
        match (&self.tenant_id, &self.issuer) {
            (Some(id), Some(issuer)) => format!("tenant {id} ({issuer})"),
            (Some(id), None) => format!("tenant {id}"),
            (None, Some(issuer)) => format!("issuer {issuer}"),
            (None, None) => "default issuer".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_headers_are_read_and_written_back() {
        let mut headers = HeaderMap::new();
        assert_eq!(Tenant::of_headers(&headers), None);
        headers.insert("tenant-id", "acme".parse().unwrap());
        let tenant = Tenant::of_headers(&headers).unwrap();
        assert_eq!(tenant, Tenant::id("acme"));
        assert_eq!(
            tenant.headers().collect::<Vec<_>>(),
            [("tenant-id", "acme")]
        );
        headers.insert("issuer", "https://a.example".parse().unwrap());
        let both = Tenant::of_headers(&headers).unwrap();
        assert_eq!(both.headers().count(), 2);
        assert_eq!(both.label(), "tenant acme (https://a.example)");
        headers.remove("tenant-id");
        headers.insert("issuer", " ".parse().unwrap());
        assert_eq!(Tenant::of_headers(&headers), None);
    }
}
