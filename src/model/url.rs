//! A server's base URL: where its endpoints live.

use std::fmt;

/// A parsed upstream base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// `host[:port]`.
    pub authority: http::uri::Authority,
    /// The path prefix of the server's endpoints, without a trailing slash
    /// (`""` or e.g. `"/c2id"`).
    pub base_path: String,
}

impl BaseUrl {
    /// Parses `scheme://authority[/base]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: http::Uri = text
            .parse()
            .map_err(|err| format!("{text:?} is not a URL: {err}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("{text:?} has no scheme (http:// or https://)"))?;
        if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
            return Err(format!("{text:?}: scheme must be http or https"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{text:?} has no host"))?;
        if uri.query().is_some() {
            return Err(format!("{text:?} must not have a query"));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(Self {
            scheme,
            authority,
            base_path,
        })
    }

    /// The host name, for TLS SNI.
    pub fn host(&self) -> &str {
        self.authority.host()
    }

    /// The URI of `path_and_query` on this server (the path unchanged). A
    /// forwarded request passes its already parsed `PathAndQuery`: no second
    /// parse on the hot path.
    pub fn uri<T>(&self, path_and_query: T) -> Result<http::Uri, http::Error>
    where
        http::uri::PathAndQuery: TryFrom<T>,
        <http::uri::PathAndQuery as TryFrom<T>>::Error: Into<http::Error>,
    {
        http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }

    /// The URI of an endpoint below the base path (`endpoint` starts with `/`).
    pub fn endpoint(&self, endpoint: &str) -> Result<http::Uri, http::Error> {
        self.uri(format!("{}{endpoint}", self.base_path))
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_keeps_the_base_path_only() {
        let url = BaseUrl::parse("https://c2id.example.com/c2id/").unwrap();
        assert_eq!(url.base_path, "/c2id");
        assert_eq!(url.host(), "c2id.example.com");
        assert_eq!(
            url.endpoint("/clients").unwrap(),
            "https://c2id.example.com/c2id/clients"
        );
        assert_eq!(
            url.uri("/token?x=1").unwrap(),
            "https://c2id.example.com/token?x=1"
        );
        assert!(BaseUrl::parse("ftp://x").is_err());
        assert!(BaseUrl::parse("c2id.example.com").is_err());
    }
}
