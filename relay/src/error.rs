//! The relay's errors, and the one gRPC status each maps to at the edge.

use tonic::{Code, Status};

/// Everything that can go wrong while serving a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// A dependency (PocketBase, Redis, NATS) failed or is down: the client should retry.
    #[error("{what}: {source}")]
    Unavailable { what: &'static str, source: Box<dyn std::error::Error + Send + Sync> },
    /// The server is shutting down: reconnect to another replica.
    #[error("relay is shutting down; reconnect")]
    ShuttingDown,
}

impl Error {
    pub fn unavailable(what: &'static str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Unavailable { what, source: source.into() }
    }
}

impl Error {
    /// The error a status stands for (for calls answered by another replica).
    pub fn from_status(code: Code, message: String) -> Self {
        match code {
            Code::Unauthenticated => Error::Unauthenticated(message),
            Code::PermissionDenied => Error::PermissionDenied(message),
            Code::InvalidArgument => Error::InvalidArgument(message),
            Code::NotFound => Error::NotFound(message),
            Code::ResourceExhausted => Error::ResourceExhausted(message),
            _ => Error::unavailable("relay", message),
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Error::unavailable("redis", e)
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unavailable { .. } | Error::ShuttingDown => Code::Unavailable,
        };
        Status::new(code, e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
