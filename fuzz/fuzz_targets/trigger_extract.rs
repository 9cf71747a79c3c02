//! The trigger catalogue (`handover::triggers`) on arbitrary exchanges:
//! a request to one of its routes (or any path), arbitrary headers and
//! bodies both ways, any status, a response seen or not. Every entry point
//! the hook calls must return without panicking, and every change it
//! extracts must survive the journal's record format (serialise, parse
//! back, equal).
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use handover::model::{Change, Side};
use handover::proxy::{Exchange, RouteId, Unseen};
use handover::triggers::{Catalogue, Resolved};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    base_path: bool,
    /// A catalogue row to aim at (its method and path pattern), or none.
    row: Option<u8>,
    /// Fill the row's `{}` segments, or the whole path without a row.
    segments: Vec<String>,
    method: u8,
    query: Option<String>,
    headers: Vec<(String, String)>,
    request_body: Vec<u8>,
    /// 0..=99 → 200..=206, otherwise any status.
    status: (u8, u16),
    response_headers: Vec<(String, String)>,
    response_body: Option<Vec<u8>>,
    unseen: bool,
    resolved: Option<(String, String)>,
    now: u64,
}

const METHODS: [Method; 6] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

fn header_map(pairs: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs.iter().take(16) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

fuzz_target!(|input: Input| {
    let base = if input.base_path { "/c2id" } else { "" };
    let catalogue = Catalogue::new(base);
    let rows: Vec<_> = (0u16..)
        .map_while(|id| catalogue.row(RouteId(id)))
        .collect();
    let mut segments = input.segments.iter().map(|s| s.replace('/', "%2F"));
    let (method, path) = match input.row.filter(|_| !rows.is_empty()) {
        Some(index) => {
            let row = rows[usize::from(index) % rows.len()];
            let mut path = String::from(base);
            for (i, part) in row.path.split("{}").enumerate() {
                if i > 0 {
                    path.push_str(&segments.next().unwrap_or_else(|| "x".to_owned()));
                }
                path.push_str(part);
            }
            (row.method.clone(), path)
        }
        None => (
            METHODS[usize::from(input.method) % METHODS.len()].clone(),
            input.segments.join("/"),
        ),
    };
    let request_body = Bytes::from(input.request_body);
    let _ = catalogue.fallback(&method, &path);
    let _ = catalogue.refresh_fallback(&method, &path, &request_body);
    let Some(route) = catalogue.route(&method, &path) else {
        return;
    };
    let _ = catalogue.token_to_resolve(route, &request_body);
    let status = match input.status {
        (pick, _) if pick < 100 => StatusCode::from_u16(200 + u16::from(pick % 7)),
        (_, any) => StatusCode::from_u16(any),
    }
    .unwrap_or(StatusCode::OK);
    let request_headers = header_map(&input.headers);
    let response_headers = header_map(&input.response_headers);
    let response_body = input.response_body.map(Bytes::from);
    let response_unseen = match (&response_body, input.unseen) {
        (Some(_), _) => None,
        (None, true) => Some(Unseen::TooLarge),
        (None, false) => Some(Unseen::Cut),
    };
    let exchange = Exchange {
        method: &method,
        path: &path,
        query: input.query.as_deref(),
        request_headers: &request_headers,
        request_body: &request_body,
        status,
        response_headers: &response_headers,
        response_body: response_body.as_ref(),
        response_unseen,
        answered_by: Side::Source,
    };
    let resolved = Resolved {
        authorization: input.resolved,
    };
    let outcome = catalogue.extract(route, &exchange, &resolved, input.now);
    for change in &outcome.changes {
        let record = change.to_record();
        let back = Change::from_record(&record).expect("a journal record parses back");
        assert_eq!(&back, change);
    }
    let _ = catalogue.uninspected(route, &exchange);
    let _ = catalogue.issued_tokens(route, &exchange);
    let _ = catalogue.token_event(route, &exchange, &resolved);
    if let Some(fallback) = catalogue.fallback(&method, &path) {
        let _ = fallback.applies(&request_body);
        let _ = fallback.unknown_here(status, response_body.as_ref());
    }
});
