//! serve's HTTP side: `/metrics` in the OpenMetrics text format, from a
//! thread of its own, so a slow scraper never holds up the trace.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tiny_http::{Header, Response, Server};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Listens on `address` (refused in one line when it can't) and answers in
/// a thread of its own until the process ends.
pub fn start(address: SocketAddr, registry: Registry) -> Result<()> {
    let server = Server::http(address).map_err(|err| {
        anyhow!("--listen {address}: {err} (give a free address and port: --listen 127.0.0.1:9464)")
    })?;
    let registry = Arc::new(registry);
    std::thread::Builder::new()
        .name("memtrace-http".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = answer(request.url(), &registry);
                // a scraper that went away is its own business
                let _ = request.respond(response);
            }
        })?;
    Ok(())
}

/// The response with its Content-Type.
fn typed<R: std::io::Read>(response: Response<R>, content_type: &str) -> Response<R> {
    match Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()) {
        Ok(header) => response.with_header(header),
        Err(()) => response,
    }
}

fn answer(url: &str, registry: &Registry) -> Response<std::io::Cursor<Vec<u8>>> {
    let path = url.split('?').next().unwrap_or(url);
    match path {
        "/metrics" => {
            let mut text = String::new();
            match encode(&mut text, registry) {
                Ok(()) => typed(Response::from_string(text), OPENMETRICS),
                Err(_) => {
                    Response::from_string("encoding the metrics failed\n").with_status_code(500)
                }
            }
        }
        "/" => typed(
            Response::from_string("memtrace serve: metrics at /metrics\n"),
            "text/plain; charset=utf-8",
        ),
        _ => Response::from_string("not found: metrics are at /metrics\n").with_status_code(404),
    }
}
