//! The open WebSocket tunnels: how many each principal holds (`websocket.max_tunnels_per_user`),
//! how many there are (a graceful shutdown waits for them through its grace period), and the
//! signal that closes them all when it ends. The tunnels themselves are [`crate::proxy::tunnel`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::meter::Meter;

/// The open tunnels: how many each principal has, and the signal that closes them all.
pub struct Tunnels {
    per_key: Mutex<HashMap<String, usize>>,
    /// The number of open tunnels (slots held), watched by [`Tunnels::drained`].
    open: watch::Sender<usize>,
    closing: watch::Sender<bool>,
    meter: Arc<Meter>,
}

impl Tunnels {
    pub fn new(meter: Arc<Meter>) -> Tunnels {
        Tunnels {
            per_key: Mutex::new(HashMap::new()),
            open: watch::channel(0).0,
            closing: watch::channel(false).0,
            meter,
        }
    }

    /// A slot for one more tunnel of `key` (a user id, or a client address), unless it already
    /// holds `max`; the slot is given back when dropped.
    pub fn admit(self: &Arc<Self>, key: String, max: usize) -> Option<Slot> {
        {
            let mut per_key = self.per_key.lock().unwrap_or_else(PoisonError::into_inner);
            let held = per_key.entry(key.clone()).or_insert(0);
            if *held >= max {
                return None;
            }
            *held += 1;
        }
        self.open.send_modify(|n| *n += 1);
        self.meter.tunnel_opened();
        Some(Slot {
            tunnels: self.clone(),
            key,
        })
    }

    /// Resolves once no tunnel is open.
    pub async fn drained(&self) {
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|n| *n == 0).await;
    }

    /// Closes every tunnel, now and from now on (the end of a graceful shutdown).
    pub fn close_all(&self) {
        self.closing.send_replace(true);
    }

    /// How many tunnels are open.
    pub fn open(&self) -> usize {
        *self.open.borrow()
    }
}

/// One tunnel's place among [`Tunnels`]: held from the decision to open it until it closes.
pub struct Slot {
    tunnels: Arc<Tunnels>,
    key: String,
}

impl Slot {
    pub fn meter(&self) -> Arc<Meter> {
        self.tunnels.meter.clone()
    }

    /// Turns true when every tunnel is to close.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.tunnels.closing.subscribe()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut per_key = self
                .tunnels
                .per_key
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(held) = per_key.get_mut(&self.key) {
                *held = held.saturating_sub(1);
                if *held == 0 {
                    per_key.remove(&self.key);
                }
            }
        }
        self.tunnels.open.send_modify(|n| *n = n.saturating_sub(1));
        self.tunnels.meter.tunnel_gone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_principal_holds_at_most_its_tunnels_and_a_closed_one_frees_its_slot() {
        let tunnels = Arc::new(Tunnels::new(Arc::new(Meter::new())));
        let a = tunnels.admit("7".into(), 2);
        let b = tunnels.admit("7".into(), 2);
        assert!(a.is_some() && b.is_some());
        assert!(tunnels.admit("7".into(), 2).is_none());
        assert!(tunnels.admit("8".into(), 2).is_some());
        assert_eq!(tunnels.open(), 2);
        drop(a);
        assert_eq!(tunnels.open(), 1);
        assert!(tunnels.admit("7".into(), 2).is_some());
    }
}
