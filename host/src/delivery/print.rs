//! The dry-run sink: writes each request to standard output instead of sending it.

use std::io::Write;

use super::http::RequestTemplate;
use super::Request;

/// Prints requests as an HTTP/1.1 client would send them, followed by a blank line.
#[derive(Clone)]
pub struct PrintSink {
    template: RequestTemplate,
}

impl PrintSink {
    /// Prints requests built from the configured URL and headers.
    pub fn new(template: RequestTemplate) -> Self {
        PrintSink { template }
    }

    /// URL and headers for requests printed from now on (a config reload).
    pub fn retarget(&self, config: &crate::Config) {
        self.template.retarget(config);
    }

    pub(crate) fn print(&self, request: &Request) {
        let http_request = self.template.build(request);
        let mut out = std::io::stdout().lock();
        let path = http_request.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut text = format!("POST {path} HTTP/1.1\n");
        for (name, value) in http_request.headers() {
            text.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
        }
        text.push('\n');
        // A closed stdout (e.g. piped into `head`) must not crash the host; the request is printed
        // or it is not, there is nothing to retry.
        let _ = out.write_all(text.as_bytes());
        let _ = out.write_all(&request.body);
        let _ = out.write_all(b"\n\n");
        let _ = out.flush();
    }
}
