//! A tower layer on the whole gRPC server that counts and times every call by
//! method and status code.
//!
//! tonic answers an error as a trailers-only response, so its `grpc-status` is
//! in the response headers; a unary success has it in the trailers only, so a
//! response without it in the headers is counted as `OK`. A server-streaming
//! call (Backup) is counted when its headers are sent: an error after the
//! first message is not seen here. Latency is to the response headers.

use std::{
    collections::{BTreeSet, HashMap},
    future::Future,
    hash::{BuildHasherDefault, Hasher},
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{HeaderName, Request, Response};
use prost::Message;
use tonic::Code;

use super::status::code_name;
use crate::{
    metrics::{Metrics, RpcSeries},
    proto::FILE_DESCRIPTOR_SET,
};

/// The method label of a path that is no method of ours: paths are chosen by
/// clients, and labels must stay a bounded set.
const UNKNOWN_METHOD: &str = "unknown";

/// Served, but not in our descriptor sets.
const REFLECTION_METHODS: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Every code tonic knows, by value (0 to 16).
const CODES: usize = 17;

/// One method's series, created on first use of each code (so only codes
/// that happened are exported) and then reused without a label lookup.
struct Method {
    name: String,
    series: [OnceLock<RpcSeries>; CODES],
}

impl Method {
    fn new(name: String) -> Self {
        Method {
            name,
            series: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

/// Every method served, and `unknown` last.
struct Methods {
    metrics: Metrics,
    /// A fixed set, read only: no caller can add keys, so a quick hash (a
    /// word at a time, as FxHash) serves, where SipHash cost about 300
    /// instructions a call.
    index: HashMap<String, usize, BuildHasherDefault<Quick>>,
    methods: Vec<Method>,
}

impl Methods {
    /// The index of the method a request path names, or of `unknown`.
    fn find(&self, path: &str) -> usize {
        path.strip_prefix('/')
            .and_then(|m| self.index.get(m))
            .copied()
            .unwrap_or(self.methods.len() - 1)
    }

    fn observe(&self, method: usize, code: Code, took: Duration) {
        let Some(method) = self.methods.get(method) else {
            return;
        };
        let code_index = usize::try_from(code as i32).unwrap_or(0);
        let Some(slot) = method.series.get(code_index) else {
            return;
        };
        slot.get_or_init(|| self.metrics.rpc_series(&method.name, code_name(code)))
            .observe(took);
    }
}

/// The method index's hash: FxHash's step, eight bytes at a time.
#[derive(Default)]
struct Quick(u64);

impl Hasher for Quick {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
}

/// Where a unary error's code is (tonic's trailers-only response).
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Adds [`RpcMetrics`] in front of a service.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    methods: Arc<Methods>,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Metrics) -> Self {
        let mut names: BTreeSet<String> =
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
                        names.insert(format!("{package}.{}/{}", service.name(), method.name()));
                    }
                }
            }
        }
        let mut methods: Vec<Method> = names.into_iter().map(Method::new).collect();
        let index = methods
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), i))
            .collect();
        methods.push(Method::new(UNKNOWN_METHOD.to_owned()));
        RpcMetricsLayer {
            methods: Arc::new(Methods {
                metrics,
                index,
                methods,
            }),
        }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            methods: Arc::clone(&self.methods),
        }
    }
}

/// Counts and times the calls to `S`.
#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    methods: Arc<Methods>,
}

impl<S, B, RB> tower::Service<Request<B>> for RpcMetrics<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Unpin,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Timed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let method = self.methods.find(request.uri().path());
        Timed {
            started: Instant::now(),
            // Called here, on the service that was made ready: no clone of
            // the stack below and no boxed future per call.
            inner: self.inner.call(request),
            methods: Arc::clone(&self.methods),
            method,
        }
    }
}

/// A call being timed: observed when its response (headers) is ready.
pub struct Timed<F> {
    inner: F,
    methods: Arc<Methods>,
    method: usize,
    started: Instant,
}

impl<F, RB, E> Future for Timed<F>
where
    F: Future<Output = Result<Response<RB>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let result = std::task::ready!(Pin::new(&mut this.inner).poll(cx));
        let code = match &result {
            Ok(response) => response
                .headers()
                .get(&GRPC_STATUS)
                .map_or(Code::Ok, |v| Code::from_bytes(v.as_bytes())),
            // The transport failed the call: no status was sent.
            Err(_) => Code::Unknown,
        };
        this.methods
            .observe(this.method, code, this.started.elapsed());
        Poll::Ready(result)
    }
}
