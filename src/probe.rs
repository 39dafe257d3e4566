//! `gatehouse probe`: a Kubernetes `exec` probe of the admin listener.
//!
//! The admin listener is pod-local (127.0.0.1) in the shipped manifests, so the kubelet, which
//! connects from the node, cannot reach it with an `httpGet` probe; it runs this command inside
//! the container instead (the image has no shell and no curl).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::Request;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Options of `gatehouse probe`.
#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// The path to ask: `/readyz` or `/healthz`.
    #[arg(value_parser = ["/readyz", "/healthz"])]
    path: String,
    /// The admin listener's address (the same variable the server reads).
    #[arg(
        long,
        env = "GATEHOUSE_LISTEN__ADMIN",
        default_value = "127.0.0.1:9090"
    )]
    admin: SocketAddr,
    /// How long to wait for the answer.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Exit 0 when the probe answers 2xx, 1 otherwise (with the reason on stderr, which the kubelet
/// records in the pod's events).
pub async fn run(args: ProbeArgs) -> ExitCode {
    // A listener bound to every interface is reached on loopback.
    let ip = match args.admin.ip() {
        ip if ip == Ipv4Addr::UNSPECIFIED => Ipv4Addr::LOCALHOST.into(),
        ip if ip == Ipv6Addr::UNSPECIFIED => Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let uri = format!(
        "http://{}{}",
        SocketAddr::new(ip, args.admin.port()),
        args.path
    );
    let request = match Request::get(&uri).body(Empty::<Bytes>::new()) {
        Ok(request) => request,
        Err(e) => {
            eprintln!("invalid probe request {uri}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    match tokio::time::timeout(args.timeout, client.request(request)).await {
        Ok(Ok(response)) if response.status().is_success() => ExitCode::SUCCESS,
        Ok(Ok(response)) => {
            eprintln!("{uri}: {}", response.status());
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("{uri}: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!(
                "{uri}: no answer within {}",
                humantime::format_duration(args.timeout)
            );
            ExitCode::FAILURE
        }
    }
}
