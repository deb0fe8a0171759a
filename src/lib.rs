//! ebb: an event-driven autoscaler that speaks KEDA's external-scaler gRPC protocol.
//!
//! # Layout
//! - [`engine`]: ScaledObject triggers, the shared source cache, decisions.
//! - [`access`]: the operator's policy on who may use ebb's identity and secrets.
//! - [`grpc`]: the `externalscaler.ExternalScaler` service KEDA calls.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`status`]: the status page and `/api/v1` (why each ScaledObject is at its count).
//! - [`explain`]: `ebb explain`, the same story in a terminal.
//! - [`server`]: wires the doors onto one engine (`ebb serve`).
//! - [`check`]: `ebb check`, one poll and one decision from the command line.
//! - [`simulate`]: `ebb simulate`, a policy's cost and latency over a workload trace.
//! - [`metrics`]: ebb's own Prometheus metrics.
//! - `k8s` (feature `k8s`): KEDA TriggerAuthentications read from the Kubernetes API.
//! - [`proto`]: code generated from `proto/externalscaler.proto`.
//!
//! Event sources live in the `ebb-scalers` crate, which knows nothing of gRPC or KEDA's RPCs.

pub mod access;
pub mod bench;
pub mod bridge;
pub mod check;
pub mod engine;
pub mod explain;
pub mod grpc;
pub mod http;
#[cfg(feature = "k8s")]
pub mod k8s;
pub mod metrics;
pub mod server;
pub mod simulate;
pub mod status;
pub mod telemetry;
pub mod tls;

/// KEDA's wire contract, package `externalscaler`.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("externalscaler");
}
