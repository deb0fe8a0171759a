//! The `externalscaler.ExternalScaler` service KEDA calls: a thin door onto the engine.
//!
//! Bad metadata → `INVALID_ARGUMENT` naming the key; a source that cannot be read →
//! `UNAVAILABLE` with the reason. Both int and float fields are filled (KEDA < 2.17 reads
//! the ints), targets are never 0, and metric names carry no `s<i>-` prefix.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{debug, instrument};

use crate::engine::{Engine, EngineError, Trigger};
use crate::proto::external_scaler_server::ExternalScaler;
use crate::proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec, MetricValue,
    ScaledObjectRef,
};

/// The gRPC service.
#[derive(Clone)]
pub struct ScalerService {
    engine: Engine,
}

impl ScalerService {
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }

    async fn trigger<T>(&self, req: &Request<T>, r: &ScaledObjectRef) -> Result<Arc<Trigger>, Status> {
        self.engine.resolve(&r.namespace, &r.name, &r.scaler_metadata, req.remote_addr()).await.map_err(to_status)
    }
}

/// Maps engine errors to the codes KEDA acts on.
pub fn to_status(e: EngineError) -> Status {
    match e {
        EngineError::InvalidMetadata(_) => Status::invalid_argument(e.to_string()),
        EngineError::FirstPollPending { .. } | EngineError::Unavailable { .. } => Status::unavailable(e.to_string()),
        EngineError::MetadataTooLarge { .. } => Status::invalid_argument(e.to_string()),
        EngineError::LimitReached { .. } => Status::resource_exhausted(e.to_string()),
        EngineError::PermissionDenied(_) => Status::permission_denied(e.to_string()),
    }
}

/// A spec with both target fields filled; the int is at least 1 so no KEDA version sees 0.
pub fn metric_spec(t: &Trigger) -> MetricSpec {
    let target = t.target();
    MetricSpec {
        metric_name: t.metric_name.clone(),
        target_size: (target.ceil() as i64).max(1),
        target_size_float: target,
    }
}

/// A value with both fields filled. KEDA uses the float when it is > 0 and the int otherwise.
pub fn metric_value(name: &str, v: f64) -> MetricValue {
    MetricValue { metric_name: name.to_string(), metric_value: v.round() as i64, metric_value_float: v }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalScaler for ScalerService {
    #[instrument(level = "debug", skip_all, fields(namespace = %req.get_ref().namespace, scaledobject = %req.get_ref().name))]
    async fn is_active(&self, req: Request<ScaledObjectRef>) -> Result<Response<IsActiveResponse>, Status> {
        let t = self.trigger(&req, req.get_ref()).await?;
        let d = self.engine.decide(&t).await.map_err(to_status)?;
        Ok(Response::new(IsActiveResponse { result: d.active }))
    }

    type StreamIsActiveStream = BoxStream<IsActiveResponse>;

    #[instrument(level = "debug", skip_all, fields(namespace = %req.get_ref().namespace, scaledobject = %req.get_ref().name))]
    async fn stream_is_active(
        &self,
        req: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let permit = self.engine.stream_permit().map_err(to_status)?;
        let t = self.trigger(&req, req.get_ref()).await?;
        let lease = permit.lease(&t, self.engine.metrics(), "StreamIsActive");
        let (tx, rx) = mpsc::channel(4);
        let engine = self.engine.clone();
        tokio::spawn(async move {
            push_activity(engine, t, tx).await;
            drop(lease);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[instrument(level = "debug", skip_all, fields(namespace = %req.get_ref().namespace, scaledobject = %req.get_ref().name))]
    async fn get_metric_spec(&self, req: Request<ScaledObjectRef>) -> Result<Response<GetMetricSpecResponse>, Status> {
        let t = self.trigger(&req, req.get_ref()).await?;
        Ok(Response::new(GetMetricSpecResponse { metric_specs: vec![metric_spec(&t)] }))
    }

    #[instrument(level = "debug", skip_all, fields(metric = %req.get_ref().metric_name))]
    async fn get_metrics(&self, req: Request<GetMetricsRequest>) -> Result<Response<GetMetricsResponse>, Status> {
        let r = req
            .get_ref()
            .scaled_object_ref
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("scaledObjectRef is missing"))?;
        let t = self.trigger(&req, r).await?;
        let d = self.engine.decide(&t).await.map_err(to_status)?;
        // KEDA relabels whatever name comes back; answer under the trigger's own name.
        Ok(Response::new(GetMetricsResponse { metric_values: vec![metric_value(&t.metric_name, d.metric)] }))
    }

    type StreamMetricSpecStream = BoxStream<GetMetricSpecResponse>;

    #[instrument(level = "debug", skip_all, fields(namespace = %req.get_ref().namespace, scaledobject = %req.get_ref().name))]
    async fn stream_metric_spec(
        &self,
        req: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, Status> {
        let permit = self.engine.stream_permit().map_err(to_status)?;
        let t = self.trigger(&req, req.get_ref()).await?;
        let lease = permit.lease(&t, self.engine.metrics(), "StreamMetricSpec");
        let (tx, rx) = mpsc::channel(1);
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let _lease = lease;
            // The target follows from the metadata, which a stream cannot change: send it
            // once, at open, then hold the stream until KEDA closes it.
            let spec = GetMetricSpecResponse { metric_specs: vec![metric_spec(&t)] };
            if tx.send(Ok(spec)).await.is_ok() {
                tokio::select! {
                    _ = tx.closed() => {}
                    _ = engine.closed() => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Feeds one StreamIsActive subscriber: the current activity at once (after the first poll),
/// then every change right after the poll that saw it. Errors send nothing: KEDA ignores
/// `false` on this stream anyway, and a fault must never look like inactivity.
async fn push_activity(engine: Engine, t: Arc<Trigger>, tx: mpsc::Sender<Result<IsActiveResponse, Status>>) {
    let mut status = t.source.status();
    let mut last: Option<bool> = None;
    loop {
        let snapshot = status.borrow_and_update().clone();
        if snapshot.polls > 0
            && let Ok(d) = engine.decide_from(&t, &snapshot, tokio::time::Instant::now())
            && last != Some(d.active)
        {
            last = Some(d.active);
            debug!(active = d.active, "pushing activity");
            if tx.send(Ok(IsActiveResponse { result: d.active })).await.is_err() {
                break;
            }
            t.log.mark_pushed();
        }
        tokio::select! {
            changed = status.changed() => if changed.is_err() { break },
            _ = tx.closed() => break,
            _ = engine.closed() => break,
        }
    }
}
