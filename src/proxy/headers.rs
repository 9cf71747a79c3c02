//! Header hygiene, pure functions over a `HeaderMap`: hop-by-hop removal
//! (RFC 9110 §7.6.1), the `X-Forwarded-*` family, and scrubbing of the
//! Connect2id issuer-selecting headers (`spec/connect2id.md` §1.3: `Issuer`
//! and `Tenant-ID` choose an issuer and may only come from trusted
//! infrastructure).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `Issuer`: selects a Connect2id issuer alias.
pub const ISSUER: HeaderName = HeaderName::from_static("issuer");
/// `Tenant-ID`: selects a tenant in the multi-tenant edition.
pub const TENANT_ID: HeaderName = HeaderName::from_static("tenant-id");
/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `Forwarded` (RFC 7239).
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Which of the headers hygiene acts on a map holds, from one pass over
/// its names: most requests carry none of them, and a removal costs a hash
/// and a probe even when the header is absent (this pass replaced ten such
/// removals per request and response: benches/README.md §7, lever 4).
#[derive(Debug, Default, Clone, Copy)]
pub struct Present {
    connection: bool,
    keep_alive: bool,
    transfer_encoding: bool,
    upgrade: bool,
    te: bool,
    proxy: bool,
    /// `Issuer` or `Tenant-ID`.
    pub issuer: bool,
    /// `Forwarded`.
    pub forwarded: bool,
    /// `Expect`.
    pub expect: bool,
}

impl Present {
    /// One pass over the names in `headers`.
    pub fn scan(headers: &HeaderMap) -> Self {
        let mut present = Self::default();
        for name in headers.keys() {
            if *name == header::CONNECTION {
                present.connection = true;
            } else if *name == header::TRANSFER_ENCODING {
                present.transfer_encoding = true;
            } else if *name == header::UPGRADE {
                present.upgrade = true;
            } else if *name == header::TE {
                present.te = true;
            } else if *name == header::EXPECT {
                present.expect = true;
            } else if *name == KEEP_ALIVE {
                present.keep_alive = true;
            } else if *name == ISSUER || *name == TENANT_ID {
                present.issuer = true;
            } else if *name == FORWARDED {
                present.forwarded = true;
            } else if is_proxy_header(name) {
                present.proxy = true;
            }
        }
        present
    }
}

/// Removes hop-by-hop headers: `Connection` and every header it names,
/// `Keep-Alive`, `Transfer-Encoding`, `Upgrade`, every `Proxy-*`, and `TE`
/// except its `trailers` token (which asks the next hop to keep trailers).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let present = Present::scan(headers);
    strip_hop_by_hop_present(headers, present);
}

/// [`strip_hop_by_hop`] with the names already scanned.
pub fn strip_hop_by_hop_present(headers: &mut HeaderMap, present: Present) {
    if present.connection {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            // The connection options that are no header names (the
            // `Keep-Alive` header goes below anyway): no allocation for
            // the common `Connection: keep-alive` / `close`.
            .filter(|token| {
                !token.eq_ignore_ascii_case("keep-alive") && !token.eq_ignore_ascii_case("close")
            })
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in named {
            // A client naming an end-to-end header we must keep for the
            // exchange to mean anything is still obeyed: RFC 9110 says the
            // named fields are hop-by-hop for this connection.
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    if present.keep_alive {
        headers.remove(KEEP_ALIVE);
    }
    if present.transfer_encoding {
        headers.remove(header::TRANSFER_ENCODING);
    }
    if present.upgrade {
        headers.remove(header::UPGRADE);
    }
    if present.te
        && let Some(te) = headers.remove(header::TE)
    {
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
    if present.proxy {
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
pub fn scrub_issuer(headers: &mut HeaderMap, trusted: bool) {
    if !trusted && Present::scan(headers).issuer {
        headers.remove(ISSUER);
        headers.remove(TENANT_ID);
    }
}

/// A peer address as an `X-Forwarded-For` value.
pub fn client_ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value")
}

/// What the proxy knows about the downstream hop.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    /// The peer address of the downstream connection, as a header value
    /// (made once per connection: see [`client_ip_value`]).
    pub client_ip: &'a HeaderValue,
    /// `https` when TLS was terminated here, else `http`.
    pub proto: &'static str,
    /// The host the client asked for (`Host` header or `:authority`).
    pub host: Option<&'a HeaderValue>,
}

/// Sets the `X-Forwarded-*` headers. With `trusted` (a load balancer in
/// front that sets them) the client IP is appended to the existing chain and
/// existing proto/host are kept; without it, client-sent values (and
/// `Forwarded`) are discarded so nobody can spoof them.
pub fn set_forwarded(headers: &mut HeaderMap, hop: Hop<'_>, trusted: bool) {
    let forwarded = !trusted && Present::scan(headers).forwarded;
    set_forwarded_present(headers, hop, trusted, forwarded);
}

/// [`set_forwarded`] knowing whether `Forwarded` is present.
pub fn set_forwarded_present(
    headers: &mut HeaderMap,
    hop: Hop<'_>,
    trusted: bool,
    forwarded: bool,
) {
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
    match existing_for {
        Some(chain) => {
            let ip = hop.client_ip.to_str().unwrap_or_default();
            if let Ok(value) = HeaderValue::from_str(&format!("{chain}, {ip}")) {
                headers.insert(X_FORWARDED_FOR, value);
            }
        }
        None => {
            headers.insert(X_FORWARDED_FOR, hop.client_ip.clone());
        }
    }
    if !trusted && forwarded {
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
        let ip = client_ip_value("192.0.2.7".parse().unwrap());
        let hop = Hop {
            client_ip: &ip,
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
        let ip = client_ip_value("10.1.1.1".parse().unwrap());
        let hop = Hop {
            client_ip: &ip,
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
