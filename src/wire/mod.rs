//! The protocol both sides share, like the protocol file a tunnel's client and server both
//! compile: the generated protobuf messages and services ([`proto`]), protocol versions and the
//! machine-readable refusal and request-error codes ([`codes`]), relayed entities with their
//! content hash and the state digest ([`entity`]), the documented JSON schema of the items the
//! hub stores and serves ([`item`]), the signed identity assertion ([`assertion`]), the
//! version syntax of the desired gateway version ([`version`]), the framing of the tunnel's
//! WebSocket transport ([`websocket`]) and the content expectations of a deployment check,
//! which the hub validates and the gateway evaluates ([`expectation`]).
//!
//! Gateway parts and the hub import this module; it imports neither.

pub mod assertion;
pub mod codes;
pub mod entity;
pub mod expectation;
pub mod item;
pub mod proto;
pub mod version;
pub mod websocket;

pub use codes::{ErrorCode, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, protocol_supported};
pub use entity::{
    CAP_SET_DIGEST, DigestBuilder, DigestKind, EntityKey, Hash, Kind, OrderedDigest, SetDigest, digest, kinds_for,
};
