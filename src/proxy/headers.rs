//! Header hygiene, pure functions over a `HeaderMap`: hop-by-hop removal
//! (RFC 9110 §7.6.1), the `X-Forwarded-*` family, and scrubbing of the
//! Connect2id issuer-selecting headers (`spec/connect2id.md` §1.3: `Issuer`
//! and `Tenant-ID` choose an issuer and may only come from trusted
//! infrastructure).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `Issuer`: selects a Connect2id issuer alias.
pub(crate) const ISSUER: HeaderName = HeaderName::from_static("issuer");
/// `Tenant-ID`: selects a tenant in the multi-tenant edition.
pub(crate) const TENANT_ID: HeaderName = HeaderName::from_static("tenant-id");
/// `X-Forwarded-For`.
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `Forwarded` (RFC 7239).
pub(crate) const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Removes hop-by-hop headers: `Connection` and every header it names,
/// `Keep-Alive`, `Transfer-Encoding`, `Upgrade`, every `Proxy-*`, and `TE`
/// except its `trailers` token (which asks the next hop to keep trailers).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        for name in named {
            // A client naming an end-to-end header we must keep for the
            // exchange to mean anything is still obeyed: RFC 9110 says the
            // named fields are hop-by-hop for this connection.
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::UPGRADE);
    if let Some(te) = headers.remove(header::TE) {
        let wants_trailers = te
            .to_str()
            .map(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
            .unwrap_or(false);
        if wants_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    if headers.keys().any(is_proxy_header) {
        let proxy_headers: Vec<HeaderName> = headers
            .keys()
            .filter(|n| is_proxy_header(n))
            .cloned()
            .collect();
        for name in proxy_headers {
            headers.remove(name);
        }
    }
}

fn is_proxy_header(name: &HeaderName) -> bool {
    name.as_str().starts_with("proxy-")
}

/// Removes client-sent `Issuer` and `Tenant-ID` unless the operator declared
/// the network in front trusted.
pub(crate) fn scrub_issuer(headers: &mut HeaderMap, trusted: bool) {
    if !trusted {
        headers.remove(ISSUER);
        headers.remove(TENANT_ID);
    }
}

/// What the proxy knows about the downstream hop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hop<'a> {
    /// The peer address of the downstream connection.
    pub client_ip: IpAddr,
    /// `https` when TLS was terminated here, else `http`.
    pub proto: &'static str,
    /// The host the client asked for (`Host` header or `:authority`).
    pub host: Option<&'a HeaderValue>,
}

/// Sets the `X-Forwarded-*` headers. With `trusted` (a load balancer in
/// front that sets them) the client IP is appended to the existing chain and
/// existing proto/host are kept; without it, client-sent values (and
/// `Forwarded`) are discarded so nobody can spoof them.
pub(crate) fn set_forwarded(headers: &mut HeaderMap, hop: Hop<'_>, trusted: bool) {
    let ip = hop.client_ip.to_string();
    let existing_for = if trusted {
        let chain: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!chain.is_empty()).then(|| chain.join(", "))
    } else {
        None
    };
    let value = match existing_for {
        Some(chain) => format!("{chain}, {ip}"),
        None => ip,
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    if !trusted {
        headers.remove(FORWARDED);
    }
    if !trusted || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(hop.proto));
    }
    if !trusted || !headers.contains_key(&X_FORWARDED_HOST) {
        match hop.host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn hop_by_hop_headers_and_connection_named_ones_go() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("x-other", "2"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic Zm9v"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip, trailers"),
            ("x-kept", "3"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ]);
        strip_hop_by_hop(&mut headers);
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["set-cookie", "te", "x-kept"]);
        assert_eq!(headers["te"], "trailers");
        assert_eq!(headers.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn te_without_trailers_is_removed() {
        let mut headers = map(&[("te", "gzip")]);
        strip_hop_by_hop(&mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn issuer_headers_are_scrubbed_unless_trusted() {
        let mut headers = map(&[
            ("issuer", "https://evil"),
            ("tenant-id", "t1"),
            ("accept", "*/*"),
        ]);
        scrub_issuer(&mut headers, true);
        assert_eq!(headers.len(), 3);
        scrub_issuer(&mut headers, false);
        assert_eq!(
            headers.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["accept"]
        );
    }

    #[test]
    fn forwarded_headers_replace_untrusted_values() {
        let host = HeaderValue::from_static("login.example.com");
        let hop = Hop {
            client_ip: "192.0.2.7".parse().unwrap(),
            proto: "https",
            host: Some(&host),
        };
        let mut headers = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "http"),
            ("forwarded", "for=1.2.3.4"),
        ]);
        set_forwarded(&mut headers, hop, false);
        assert_eq!(headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "login.example.com");
        assert!(!headers.contains_key("forwarded"));
    }

    #[test]
    fn forwarded_headers_append_when_trusted() {
        let hop = Hop {
            client_ip: "10.1.1.1".parse().unwrap(),
            proto: "http",
            host: None,
        };
        let mut headers = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "public.example.com"),
        ]);
        set_forwarded(&mut headers, hop, true);
        assert_eq!(
            headers["x-forwarded-for"],
            "203.0.113.9, 10.0.0.2, 10.1.1.1"
        );
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "public.example.com");
    }
}
