//! Connection caps (SPEC §10): open connections per listener, and per client address on that
//! listener. A connection over either cap is closed as soon as it is accepted, before any TLS
//! work, so a flood costs a descriptor for an instant and no memory.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::meter::Meter;

/// At most one warning per cap and listener in this period; the refusals in between are counted
/// in the next one (and always in the metric).
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The caps of one listener, and the names they are configured by (for the log line).
#[derive(Debug, Clone, Copy)]
pub struct CapSettings {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// How an operator raises each cap: `server.max_connections` and so on.
    pub names: [&'static str; 2],
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cap {
    Listener = 0,
    Client = 1,
}

impl Cap {
    /// The metric's `reason` label.
    fn as_str(self) -> &'static str {
        match self {
            Cap::Listener => "max_connections",
            Cap::Client => "max_connections_per_ip",
        }
    }
}

/// A client as the per-address cap counts it: an IPv4 address, or an IPv6 /64 (one subscriber's
/// usual allocation, which holds more addresses than a cap could ever count one by one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Client(IpAddr);

impl Client {
    pub fn of(ip: IpAddr) -> Client {
        match ip {
            IpAddr::V4(v4) => Client(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Client(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Client(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[derive(Default)]
struct Open {
    total: usize,
    by_client: HashMap<Client, usize>,
}

#[derive(Default)]
struct Warned {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

/// The open connections of one listener.
pub struct Caps {
    listener: &'static str,
    settings: CapSettings,
    open: Mutex<Open>,
    warned: [Warned; 2],
    meter: Option<Arc<Meter>>,
}

/// One admitted connection; dropping it frees its place.
pub struct Slot {
    caps: Arc<Caps>,
    client: Client,
}

impl Caps {
    pub fn new(listener: &'static str, settings: CapSettings, meter: Option<Arc<Meter>>) -> Caps {
        Caps {
            listener,
            settings,
            open: Mutex::new(Open::default()),
            warned: Default::default(),
            meter,
        }
    }

    /// A place for a connection from `peer`, or `None` (logged and counted) when a cap is reached.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let client = Client::of(peer);
        let refused = {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            if open.total >= self.settings.max_connections {
                Some(Cap::Listener)
            } else {
                let from_client = open.by_client.entry(client).or_default();
                if *from_client >= self.settings.max_connections_per_ip {
                    Some(Cap::Client)
                } else {
                    *from_client += 1;
                    open.total += 1;
                    None
                }
            }
        };
        match refused {
            None => Some(Slot {
                caps: self.clone(),
                client,
            }),
            Some(cap) => {
                self.refused(cap, client);
                None
            }
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    fn refused(&self, cap: Cap, client: Client) {
        if let Some(meter) = &self.meter {
            meter.connection_refused(self.listener, cap.as_str());
        }
        let warned = &self.warned[cap as usize];
        {
            let mut last = warned.last.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
                warned.suppressed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            *last = Some(now);
        }
        let suppressed = warned.suppressed.swap(0, Ordering::Relaxed);
        let name = self.settings.names[cap as usize];
        match cap {
            Cap::Listener => tracing::warn!(
                listener = self.listener,
                cap = name,
                limit = self.settings.max_connections,
                refused_since_last_warning = suppressed,
                "connection refused: {} has {} connections open, the most {name} allows; \
                 further refusals are counted in the next warning, at most one a minute",
                self.listener,
                self.settings.max_connections,
            ),
            Cap::Client => tracing::warn!(
                listener = self.listener,
                cap = name,
                limit = self.settings.max_connections_per_ip,
                client = %client,
                refused_since_last_warning = suppressed,
                "connection refused: {client} has {} connections open to {}, the most {name} \
                 allows; further refusals are counted in the next warning, at most one a minute",
                self.settings.max_connections_per_ip,
                self.listener,
            ),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .caps
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(from_client) = open.by_client.get_mut(&self.client) {
            *from_client = from_client.saturating_sub(1);
            if *from_client == 0 {
                open.by_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn caps(max: usize, per_ip: usize) -> Arc<Caps> {
        Arc::new(Caps::new(
            "listen.test",
            CapSettings {
                max_connections: max,
                max_connections_per_ip: per_ip,
                names: ["server.max_connections", "server.max_connections_per_ip"],
            },
            None,
        ))
    }

    #[test]
    fn a_freed_place_is_given_again_and_forgotten_clients_take_no_memory() {
        let caps = caps(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = caps.admit(a).unwrap();
        let _second = caps.admit(a).unwrap();
        assert!(caps.admit(a).is_none(), "a third from one address");
        let _other = caps.admit(b).unwrap();
        assert!(caps.admit(b).is_none(), "over the listener's cap");
        drop(first);
        assert!(caps.admit(a).is_some());
        assert_eq!(caps.open(), 2, "the slot above was dropped at once");
        drop(_second);
        drop(_other);
        assert!(caps.open.lock().unwrap().by_client.is_empty());
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64_and_a_mapped_ipv4_as_ipv4() {
        let caps = caps(10, 1);
        let _one = caps.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(
            caps.admit("2001:db8:1:2:ffff::9".parse().unwrap())
                .is_none()
        );
        assert!(caps.admit("2001:db8:1:3::1".parse().unwrap()).is_some());
        let _v4 = caps.admit("192.0.2.7".parse().unwrap()).unwrap();
        assert!(caps.admit("::ffff:192.0.2.7".parse().unwrap()).is_none());
        assert_eq!(
            Client::of("2001:db8:1:2:3:4:5:6".parse().unwrap()).to_string(),
            "2001:db8:1:2::/64"
        );
    }
}
