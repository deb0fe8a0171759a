//! An open stream's hold on the engine: its place under `--max-streams`, its trigger kept from
//! eviction, and its `ebb_active_streams` gauge, released together.

use std::sync::Arc;

use super::{Metrics, Trigger, trigger};

/// An open stream's place under `--max-streams`; released on drop. Taken before the trigger
/// is resolved (so a flood is refused early), then turned into a [`StreamLease`].
pub struct StreamPermit(pub(super) Arc<std::sync::atomic::AtomicUsize>);

impl StreamPermit {
    /// The whole of one open stream: this place, its trigger kept from eviction, and its
    /// `ebb_active_streams{rpc}` gauge, all released together when the lease drops.
    pub fn lease(self, t: &Arc<Trigger>, metrics: &Metrics, rpc: &str) -> StreamLease {
        let gauge = metrics.active_streams.get_or_create(&crate::metrics::RpcLabels { rpc: rpc.into() }).clone();
        gauge.inc();
        StreamLease { _permit: self, _guard: t.stream_guard(), gauge }
    }
}

/// See [`StreamPermit::lease`].
pub struct StreamLease {
    _permit: StreamPermit,
    _guard: trigger::StreamGuard,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
