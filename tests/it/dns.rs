//! A real DNS server for the tests: dnsmasq (installed by `tests/run.sh`) on a loopback port,
//! authoritative for `.example`, serving the TXT records a test gives it.

use std::net::SocketAddr;
use std::time::Duration;

pub struct Dns {
    child: std::process::Child,
}

impl Dns {
    /// Serves `records` — (name, the strings of one TXT record) — on `addr`.
    pub async fn start_at(addr: SocketAddr, records: &[(&str, &[&str])]) -> Dns {
        let mut command = std::process::Command::new("dnsmasq");
        command
            .arg("--keep-in-foreground")
            .arg(format!("--port={}", addr.port()))
            .args([
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
            ])
            .args([
                "--conf-file=/dev/null",
                "--user=root",
                "--pid-file",
                "--local=/example/",
            ]);
        for (name, strings) in records {
            // No shell here: quotes would reach the record verbatim.
            command.arg(format!("--txt-record={name},{}", strings.join(",")));
        }
        let mut child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dnsmasq (tests/run.sh installs it)");
        // dnsmasq binds before answering; give it a moment and check it is still running.
        for _ in 0..50 {
            if std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| {
                    s.set_read_timeout(Some(Duration::from_millis(100)))?;
                    s.connect(addr)?;
                    // A minimal DNS query for "example." SOA.
                    s.send(&[
                        0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'e', b'x', b'a', b'm', b'p',
                        b'l', b'e', 0, 0, 6, 0, 1,
                    ])?;
                    let mut buf = [0u8; 512];
                    s.recv(&mut buf)
                })
                .is_ok()
            {
                return Dns { child };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("dnsmasq did not answer on {addr}");
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
