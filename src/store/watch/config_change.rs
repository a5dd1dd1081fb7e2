//! The network config changing in etcd under a running node: the node keeps the config it
//! started with (as flanneld does) and says, in one line, what a restart would change.

use etcd_client::{Client, EventType};

use super::Runner;
use crate::config::NetworkConfig;

impl Runner {
    /// The network config changed in etcd while we run: say what changed. The node keeps the
    /// config it started with (as flanneld does); a restart applies the new one.
    pub(super) fn on_config_event(&mut self, kind: EventType, value: &[u8]) {
        let now = match kind {
            EventType::Delete => Err("it was deleted".to_string()),
            EventType::Put => std::str::from_utf8(value)
                .map_err(|e| e.to_string())
                .and_then(|t| {
                    NetworkConfig::parse(t).map_err(|e| crate::error::Chain(&e).to_string())
                }),
        };
        match now {
            Ok(next) => {
                let changes = next.changes_since(&self.config);
                if changes.is_empty() {
                    tracing::info!("network config rewritten in etcd without a change");
                } else {
                    tracing::warn!(changes = %changes.join(", "), "network config changed in etcd; this node keeps running with the config it started with: restart it to apply the change");
                }
            }
            Err(why) => {
                tracing::warn!(error = %why, "network config in etcd is no longer usable; this node keeps running with the config it started with");
            }
        }
    }

    /// A store started from a saved state, once etcd answers: says whether the network
    /// config in etcd is still the one the node runs (a change while it was away applies at
    /// the next restart, as any change does).
    pub(super) async fn compare_config(&mut self, client: &mut Client) {
        let read =
            crate::store::lease::read_config_text(client, &self.keys, NetworkConfig::parse).await;
        match read {
            Ok((now, _)) => {
                let changes = now.changes_since(&self.config);
                if !changes.is_empty() {
                    tracing::warn!(changes = %changes.join(", "), "the network config in etcd differs from the saved one this node started with; restart it to apply the change");
                }
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::Chain(&e), "the network config in etcd is not usable; this node keeps running with the saved one");
            }
        }
    }
}
