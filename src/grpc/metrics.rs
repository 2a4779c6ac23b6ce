//! A tower layer on the whole gRPC server that counts and times every call by
//! method and status code.
//!
//! tonic answers an error as a trailers-only response, so its `grpc-status` is
//! in the response headers; a unary success has it in the trailers only, so a
//! response without it in the headers is counted as `OK`. A server-streaming
//! call (Backup) is counted when its headers are sent: an error after the
//! first message is not seen here. Latency is to the response headers.

use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http::{Request, Response};
use prost::Message;
use tonic::Code;

use super::status::code_name;
use crate::{metrics::Metrics, proto::FILE_DESCRIPTOR_SET};

/// The method label of a path that is no method of ours: paths are chosen by
/// clients, and labels must stay a bounded set.
const UNKNOWN_METHOD: &str = "unknown";

/// Served, but not in our descriptor sets.
const REFLECTION_METHODS: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Adds [`RpcMetrics`] in front of a service.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: Metrics,
    /// `package.Service/Method` of every method served.
    methods: Arc<HashSet<String>>,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Metrics) -> Self {
        let mut methods: HashSet<String> =
            REFLECTION_METHODS.iter().map(|m| (*m).to_owned()).collect();
        for set in [FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET] {
            // Both sets are compiled in and valid; a failure would only make
            // their methods count as `unknown`.
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                tracing::warn!("cannot decode a file descriptor set; its methods count as unknown");
                continue;
            };
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    for method in &service.method {
                        methods.insert(format!("{package}.{}/{}", service.name(), method.name()));
                    }
                }
            }
        }
        RpcMetricsLayer {
            metrics,
            methods: Arc::new(methods),
        }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

/// Counts and times the calls to `S`.
#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    layer: RpcMetricsLayer,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, RB> tower::Service<Request<B>> for RpcMetrics<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let path = request.uri().path();
        let method = match path.strip_prefix('/') {
            Some(m) if self.layer.methods.contains(m) => m.to_owned(),
            _ => UNKNOWN_METHOD.to_owned(),
        };
        let metrics = self.layer.metrics.clone();
        // The clone that was made ready goes to this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let started = Instant::now();
        Box::pin(async move {
            let result = inner.call(request).await;
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .map_or(Code::Ok, |v| Code::from_bytes(v.as_bytes())),
                // The transport failed the call: no status was sent.
                Err(_) => Code::Unknown,
            };
            metrics.rpc(&method, code_name(code), started.elapsed());
            result
        })
    }
}
