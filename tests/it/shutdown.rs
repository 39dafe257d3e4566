//! The real binary: graceful shutdown on SIGTERM, access logs.

use std::time::Duration;

use crate::harness::*;

#[tokio::test]
async fn sigterm_lets_the_in_flight_request_finish_then_exits_0() {
    let upstream = Upstream::start().await;
    upstream.set_delay(Duration::from_millis(1500));
    let mut gh = Process::start(&process_config(&upstream.url(), ""), &[]).await;
    let url = gh.http_url("/public/slow");
    let in_flight = tokio::spawn(async move { http1_client().get(url).send().await });
    // Wait until the request has reached the upstream, then ask gatehouse to stop.
    for _ in 0..100 {
        if upstream.hits() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.hits(), 1);
    gh.signal("TERM");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = tokio::net::TcpStream::connect(gh.addrs["listen.http"]).await;
    assert!(
        refused.is_err(),
        "new connections are still accepted while draining"
    );

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "upstream ok");
    let status = tokio::time::timeout(Duration::from_secs(10), gh.child.wait())
        .await
        .expect("exited within 10 s")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn sigterm_with_idle_keep_alive_connections_exits_promptly() {
    let upstream = Upstream::start().await;
    let mut gh = Process::start(&process_config(&upstream.url(), ""), &[]).await;
    let client = http1_client();
    // Leaves an idle keep-alive connection in the client's pool.
    let response = client.get(gh.http_url("/public/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    gh.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(5), gh.child.wait())
        .await
        .expect("an idle connection held shutdown open")
        .unwrap();
    assert!(status.success(), "{status:?}");
    drop(client);
}

#[tokio::test]
async fn each_request_leaves_one_access_log_line_without_credentials() {
    let upstream = Upstream::start().await;
    let mut gh = Process::start(&process_config(&upstream.url(), ""), &[]).await;
    let client = http1_client();
    client
        .get(gh.http_url("/public/./a/?access_token=supersecret&page=2"))
        .header("x-request-id", "log-test-1")
        .send()
        .await
        .unwrap();
    client.get(gh.http_url("/private/x")).send().await.unwrap();
    gh.signal("TERM");
    gh.child.wait().await.unwrap();

    let logs = gh.logs();
    let access: Vec<serde_json::Value> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "gatehouse::access")
        .collect();
    assert_eq!(access.len(), 2, "{logs:#?}");
    let first = &access[0];
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/public/a/");
    assert_eq!(first["status"], 200);
    assert_eq!(first["request_id"], "log-test-1");
    assert_eq!(first["query"], "access_token=REDACTED&page=2");
    assert!(first["latency_ms"].as_f64().is_some());
    assert!(first["upstream_ms"].as_f64().is_some());
    assert_eq!(access[1]["status"], 401);
    assert_eq!(access[1]["error"], "no valid credential");
    assert!(access[1]["upstream_ms"].is_null());
    assert!(!logs.iter().any(|l| l.contains("supersecret")));
}
