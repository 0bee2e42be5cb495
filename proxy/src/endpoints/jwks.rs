//! `GET /.well-known/jwks.json`: the current key ring's Ed25519 public
//! keys.

use pingora_proxy::Session;

use super::Result;
use crate::respond;
use crate::state::State;

pub(super) async fn jwks(state: &State, session: &mut Session) -> Result<()> {
    respond::json(session, 200, state.tokens.jwks_json(), &[]).await
}
