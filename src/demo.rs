//! `gatehouse demo-upstream`: a tiny application to put behind gatehouse while trying it out. It
//! answers every request with what reached it — the request line and every header, in the order
//! received, as plain text — so that what gatehouse adds (`X-Auth-User`, `X-Auth-Assertion`, …)
//! and what it removes (a client's own `X-Auth-User`) can be seen with curl.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use clap::Args;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

/// Options of `gatehouse demo-upstream`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Address to listen on (gatehouse's `upstream.url` points here).
    #[arg(long, env = "GATEHOUSE_DEMO_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
}

/// The request a client sent, as text: `METHOD path?query VERSION`, then one `name: value` line
/// per header field (every copy of a repeated field), in the order received.
pub fn describe<B>(request: &Request<B>) -> String {
    let target = request
        .uri()
        .path_and_query()
        .map_or_else(|| request.uri().path(), |pq| pq.as_str());
    let mut text = format!("{} {target} {:?}\n", request.method(), request.version());
    for (name, value) in request.headers() {
        let _ = writeln!(
            text,
            "{name}: {}",
            String::from_utf8_lossy(value.as_bytes())
        );
    }
    text
}

/// Answers one request with [`describe`]'s text, after reading (and dropping) its body, so the
/// connection stays usable for the next request.
async fn echo(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = describe(&request);
    // A body that cannot be read only ends this connection; the answer is the same.
    let _ = request.into_body().collect().await;
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}

/// Serves [`echo`] on `listener` (HTTP/1.1 and h2c) until `shutdown` completes, then lets open
/// requests finish.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    continue;
                };
                let connection = builder
                    .serve_connection(TokioIo::new(stream), service_fn(echo))
                    .into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    // A client that goes away mid-request is no error of the demo's.
                    let _ = connection.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    graceful.shutdown().await;
}

/// `gatehouse demo-upstream`: listens on `--listen` until SIGTERM or SIGINT.
pub async fn run(args: DemoArgs) -> ExitCode {
    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    eprintln!("demo upstream: answering every request with what it received, on http://{addr}");
    serve(listener, crate::server::shutdown::signal()).await;
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_holds_the_request_line_and_every_header() {
        let request = Request::builder()
            .method("POST")
            .uri("/private/x?a=1")
            .header("X-Auth-User", "ada")
            .header("accept", "*/*")
            .header("accept", "text/plain")
            .body(())
            .unwrap_or_default();
        assert_eq!(
            describe(&request),
            "POST /private/x?a=1 HTTP/1.1\nx-auth-user: ada\naccept: */*\naccept: text/plain\n"
        );
    }
}
