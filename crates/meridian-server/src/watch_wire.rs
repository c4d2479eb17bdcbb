//! etcd's `WatchResponse` with its events already encoded, and the `Watch`
//! gRPC service that sends it.
//!
//! A watch event goes to many watchers. Encoded by tonic's generated
//! service, every watcher's response would encode every event again (walk
//! it, size it, copy it). Here a run of events is encoded once per group of
//! watchers that select the same events ([`encode_events`]), and each
//! watcher's response carries those bytes as they are: its own header,
//! watch id and flags, then the shared encoded events. On the wire it is
//! etcd's `WatchResponse`, byte for byte what prost would write for the
//! same fields (events are field 11, the last one).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use meridian_proto::etcdserverpb as pb;
use meridian_proto::mvccpb;
use prost::encoding::{decode_varint, encode_key, encode_varint, encoded_len_varint, DecodeContext, WireType};
use prost::{DecodeError, Message};
use tonic::codegen::{empty_body, http, Body, BoxFuture, Context, Poll, StdError};

/// `WatchResponse.events`.
const EVENTS_TAG: u32 = 11;

/// A `WatchResponse` whose `events` are held encoded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WireResponse {
    /// Every field but `events` (which stays empty here).
    pub head: pb::WatchResponse,
    /// The `events` field, encoded: each event with its tag and length.
    pub events: Bytes,
}

impl WireResponse {
    /// A response with `events` already encoded by [`encode_events`].
    pub fn with_events(head: pb::WatchResponse, events: Bytes) -> WireResponse {
        WireResponse { head, events }
    }

    /// The response as tonic's generated type (for tests and tools).
    pub fn to_plain(&self) -> Result<pb::WatchResponse, DecodeError> {
        pb::WatchResponse::decode(self.encode_to_vec().as_slice())
    }
}

impl From<pb::WatchResponse> for WireResponse {
    fn from(mut head: pb::WatchResponse) -> WireResponse {
        let events = encode_events(&std::mem::take(&mut head.events));
        WireResponse { head, events }
    }
}

/// `events` as the `events` field of a `WatchResponse`: each with its tag
/// and length, ready to follow any response's other fields.
pub fn encode_events(events: &[mvccpb::Event]) -> Bytes {
    let len: usize = events.iter().map(|e| framed_len(e.encoded_len())).sum();
    let mut buf = BytesMut::with_capacity(len);
    for e in events {
        encode_key(EVENTS_TAG, WireType::LengthDelimited, &mut buf);
        encode_varint(e.encoded_len() as u64, &mut buf);
        e.encode_raw(&mut buf);
    }
    buf.freeze()
}

/// The size of one `events` entry whose event encodes to `n` bytes.
fn framed_len(n: usize) -> usize {
    prost::encoding::key_len(EVENTS_TAG) + encoded_len_varint(n as u64) + n
}

impl Message for WireResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.head.encode_raw(buf);
        buf.put_slice(&self.events);
    }

    fn merge_field(&mut self, tag: u32, wire_type: WireType, buf: &mut impl Buf, ctx: DecodeContext) -> Result<(), DecodeError> {
        if tag != EVENTS_TAG {
            return self.head.merge_field(tag, wire_type, buf, ctx);
        }
        prost::encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
        let len = usize::try_from(decode_varint(buf)?).map_err(|_| DecodeError::new("event length overflows"))?;
        if len > buf.remaining() {
            return Err(DecodeError::new("buffer underflow"));
        }
        let event = buf.copy_to_bytes(len);
        // Checked as an event, kept as bytes.
        mvccpb::Event::decode(event.clone())?;
        let mut events = BytesMut::with_capacity(self.events.len() + framed_len(len));
        events.extend_from_slice(&self.events);
        encode_key(EVENTS_TAG, WireType::LengthDelimited, &mut events);
        encode_varint(len as u64, &mut events);
        events.extend_from_slice(&event);
        self.events = events.freeze();
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.head.encoded_len() + self.events.len()
    }

    fn clear(&mut self) {
        self.head.clear();
        self.events = Bytes::new();
    }
}

/// What serves a watch stream: the inbound requests in, [`WireResponse`]s
/// out.
pub trait WatchHandler: Send + Sync + 'static {
    /// The responses' stream.
    type Stream: tokio_stream::Stream<Item = Result<WireResponse, tonic::Status>> + Send + 'static;
    /// Opens one watch stream.
    fn watch(&self, req: tonic::Request<tonic::Streaming<pb::WatchRequest>>) -> BoxFuture<tonic::Response<Self::Stream>, tonic::Status>;
}

/// etcd's `etcdserverpb.Watch` gRPC service, sending [`WireResponse`]s (in
/// place of tonic's generated `WatchServer`, which would encode every
/// event of every response itself).
pub struct WatchServer<T> {
    inner: Arc<T>,
}

impl<T> WatchServer<T> {
    pub fn new(inner: T) -> Self {
        WatchServer { inner: Arc::new(inner) }
    }
}

impl<T> Clone for WatchServer<T> {
    fn clone(&self) -> Self {
        WatchServer { inner: self.inner.clone() }
    }
}

impl<T> tonic::server::NamedService for WatchServer<T> {
    const NAME: &'static str = "etcdserverpb.Watch";
}

/// The one method, as tonic's server machinery calls it.
struct WatchMethod<T>(Arc<T>);

impl<T: WatchHandler> tonic::server::StreamingService<pb::WatchRequest> for WatchMethod<T> {
    type Response = WireResponse;
    type ResponseStream = T::Stream;
    type Future = BoxFuture<tonic::Response<T::Stream>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<pb::WatchRequest>>) -> Self::Future {
        self.0.watch(request)
    }
}

impl<T, B> tonic::codegen::Service<http::Request<B>> for WatchServer<T>
where
    T: WatchHandler,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != "/etcdserverpb.Watch/Watch" {
            return Box::pin(async {
                let mut response = http::Response::new(empty_body());
                let headers = response.headers_mut();
                headers.insert(tonic::Status::GRPC_STATUS, (tonic::Code::Unimplemented as i32).into());
                headers.insert(http::header::CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE);
                Ok(response)
            });
        }
        let method = WatchMethod(self.inner.clone());
        Box::pin(async move {
            let codec = tonic::codec::ProstCodec::<WireResponse, pb::WatchRequest>::default();
            Ok(tonic::server::Grpc::new(codec).streaming(method, req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: i64) -> mvccpb::KeyValue {
        mvccpb::KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            create_revision: 2,
            mod_revision: rev,
            version: 3,
            lease: 7,
        }
    }

    fn sample() -> pb::WatchResponse {
        pb::WatchResponse {
            header: Some(pb::ResponseHeader { cluster_id: 1, member_id: 2, revision: 9, raft_term: 4 }),
            watch_id: 5,
            fragment: true,
            events: vec![
                mvccpb::Event { r#type: 0, kv: Some(kv("/a", "x", 8)), prev_kv: None },
                mvccpb::Event { r#type: 1, kv: Some(kv("/b", "", 9)), prev_kv: Some(kv("/b", "y", 6)) },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn encodes_as_prost_encodes_the_same_response() {
        let plain = sample();
        let wire = WireResponse::from(plain.clone());
        assert_eq!(wire.encode_to_vec(), plain.encode_to_vec(), "byte for byte");
        assert_eq!(wire.encoded_len(), plain.encoded_len());
        assert_eq!(wire.to_plain().unwrap(), plain);
    }

    #[test]
    fn shared_events_go_under_each_watchers_own_fields() {
        let events = sample().events;
        let shared = encode_events(&events);
        for id in [1, 2, 300] {
            let head = pb::WatchResponse { watch_id: id, ..Default::default() };
            let got = WireResponse::with_events(head, shared.clone()).to_plain().unwrap();
            assert_eq!((got.watch_id, got.events.as_slice()), (id, events.as_slice()));
        }
        assert!(encode_events(&[]).is_empty());
    }

    #[test]
    fn decodes_what_it_encodes_and_refuses_a_bad_event() {
        let plain = sample();
        let wire = WireResponse::decode(plain.encode_to_vec().as_slice()).unwrap();
        assert_eq!(wire, WireResponse::from(plain));
        // An events entry that is not an event (field 1 as a varint with
        // no value) is refused.
        let bad = [0x5a, 0x01, 0x08];
        assert!(WireResponse::decode(&bad[..]).is_err());
    }
}
