//! The dry-run sink: writes each request to standard output instead of sending it.

use std::io::Write;

use super::request_builder::{self, Framing};
use crate::config::LiveConfig;
use crate::request::Request;

/// Prints requests as an HTTP/1.1 client would send them, followed by a blank line.
#[derive(Clone)]
pub struct PrintSink {
    pub(super) live: LiveConfig,
    /// Which endpoint's settings it prints with.
    pub(super) slot: usize,
}

impl PrintSink {
    /// Prints requests built from the URL and headers in force.
    pub fn new(live: LiveConfig) -> Self {
        PrintSink { live, slot: 0 }
    }

    pub(crate) fn print(&self, request: &Request) {
        self.print_framed(request, Framing::Single);
    }

    /// As [`PrintSink::print`], for a body framed as `framing` says (a batch).
    pub(crate) fn print_framed(&self, request: &Request, framing: Framing<'_>) {
        let http_request =
            request_builder::build_framed(self.live.load().endpoint_delivery(self.slot), request, framing);
        let path = http_request.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut text = format!("POST {path} HTTP/1.1\n");
        for (name, value) in http_request.headers() {
            text.push_str(&format!("{}: {}\n", title_case(name.as_str()), String::from_utf8_lossy(value.as_bytes())));
        }
        text.push('\n');
        let mut out = std::io::stdout().lock();
        // A closed stdout (e.g. piped into `head`) must not crash the host; the request is printed
        // or it is not, there is nothing to retry.
        let _ = out.write_all(text.as_bytes());
        let _ = out.write_all(&request.body);
        let _ = out.write_all(b"\n\n");
        let _ = out.flush();
    }
}

/// A header name as the HTTP sink writes it (hyper's title case): `content-length` →
/// `Content-Length`.
fn title_case(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let c = if upper { c.to_ascii_uppercase() } else { c };
            upper = c == '-';
            c
        })
        .collect()
}
