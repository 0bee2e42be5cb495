//! Where "the global URL" points right now.
//!
//! Real clients resolve one global host name through geo DNS, and the
//! answer changes as they move. [`GlobalUrl`] is that resolution, made
//! pluggable: the default is a [`FixedUrl`]; the demo plugs in a simulated
//! geo DNS whose answer changes between calls.

use async_trait::async_trait;

use crate::ResolveError;

/// Gives the base URL (`http://host:port`) to use for the global calls
/// (login, `closestToMe`, refresh, logout) and, in
/// [`crate::Routing::Global`], for every request. Called once per use, so
/// an implementation may answer differently every time.
#[async_trait]
pub trait GlobalUrl: Send + Sync + 'static {
    async fn resolve(&self) -> Result<String, ResolveError>;
}

/// Always the same URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedUrl(pub String);

#[async_trait]
impl GlobalUrl for FixedUrl {
    async fn resolve(&self) -> Result<String, ResolveError> {
        Ok(self.0.clone())
    }
}

/// Any `Fn() -> String` resolves synchronously.
#[async_trait]
impl<F> GlobalUrl for F
where
    F: Fn() -> String + Send + Sync + 'static,
{
    async fn resolve(&self) -> Result<String, ResolveError> {
        Ok(self())
    }
}
