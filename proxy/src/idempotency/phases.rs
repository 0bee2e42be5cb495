//! The Pingora glue: [`Idempotency::request_filter`] runs the decision
//! against a live session and writes the proxy's own answers (replay,
//! problem+json). The other phases call [`super::Tracker`] directly (see
//! the module docs for the calls).

use std::sync::Arc;
use std::time::Duration;

use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::problem::{Problem, CONTENT_TYPE};
use super::{Answer, Begin, Idempotency, Replay, Tracker, REPLAYED_HEADER};

/// What `request_filter` should do next.
pub enum Step {
    /// The proxy answered (replay, `400`, `409`, `422`, `503`): return
    /// `Ok(true)` from `request_filter`.
    Answered,
    /// Forward. `Some`: keep the tracker in the `CTX` and feed it; `None`:
    /// the request is not covered. (Boxed: a tracker holds hash state and
    /// the answer being captured; uncovered requests carry a null pointer.)
    Forward(Option<Box<Tracker>>),
}

impl Idempotency {
    /// The `request_filter` step for a request of the verified `subject`
    /// that is about to be forwarded to this server's app.
    ///
    /// A request whose key has a stored answer has its body read here (to
    /// compare fingerprints), each read waiting at most `body_wait`
    /// (`limits.body_read_timeout_ms`: HTTP/2 bodies have no other
    /// deadline), and is answered without reaching the app.
    pub async fn request_filter(
        self: &Arc<Self>,
        session: &mut Session,
        subject: &[u8],
        body_wait: Duration,
    ) -> pingora_error::Result<Step> {
        if !self.covers(&session.req_header().method) {
            return Ok(Step::Forward(None));
        }
        let begin = {
            let req = session.req_header();
            self.begin(subject, &req.method, &req.uri, &req.headers)
                .await
        };
        match begin {
            Begin::Pass => Ok(Step::Forward(None)),
            Begin::Forward(tracker) => {
                // Keep reading the app's answer when the client hangs up
                // after sending its request: the answer is what its retry
                // will get.
                session.downstream_session.set_abort_on_close(false);
                Ok(Step::Forward(Some(Box::new(tracker))))
            }
            Begin::Reject(p) => {
                write_problem(session, &p).await?;
                Ok(Step::Answered)
            }
            Begin::Check(mut check) => {
                while let Some(chunk) = crate::http2::next_body_chunk(session, body_wait).await? {
                    check.update(&chunk);
                }
                match check.finish() {
                    Answer::Replay(r) => write_replay(session, &r).await?,
                    Answer::Problem(p) => write_problem(session, &p).await?,
                }
                Ok(Step::Answered)
            }
        }
    }
}

/// The response header of a replay: the stored status and headers,
/// `content-length`, `idempotent-replayed: true`.
pub fn replay_header(r: &Replay) -> pingora_error::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(r.status, Some(r.headers.len() + 2))?;
    for (name, value) in &r.headers {
        resp.append_header(name.clone(), value.clone())?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, r.body.len().to_string())?;
    resp.insert_header(REPLAYED_HEADER, "true")?;
    Ok(resp)
}

/// The response header of a problem answer.
pub fn problem_header(p: &Problem) -> pingora_error::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(p.status, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, CONTENT_TYPE)?;
    resp.insert_header(http::header::CONTENT_LENGTH, p.body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if let Some(s) = p.retry_after {
        resp.insert_header(http::header::RETRY_AFTER, s.to_string())?;
    }
    Ok(resp)
}

pub async fn write_replay(session: &mut Session, r: &Replay) -> pingora_error::Result<()> {
    let header = replay_header(r)?;
    session
        .write_response_header(Box::new(header), r.body.is_empty())
        .await?;
    if !r.body.is_empty() {
        session
            .write_response_body(Some(r.body.clone()), true)
            .await?;
    }
    Ok(())
}

pub async fn write_problem(session: &mut Session, p: &Problem) -> pingora_error::Result<()> {
    let header = problem_header(p)?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(p.body.clone()), true)
        .await
}
