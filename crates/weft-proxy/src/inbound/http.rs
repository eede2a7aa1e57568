//! The inbound request path: a request from a caller (over mTLS when it is meshed,
//! terminated by [`crate::inbound`]) to the local application, top to bottom.
//!
//! 1. **Resolve**: the application's address ([`ConnContext::resolve`]).
//! 2. **Count** it under its labels, with the caller's identity
//!    ([`ConnContext::count_request`]).
//! 3. **Authorize** the caller for the port ([`super::authorize::http`]): 403, or
//!    gRPC PERMISSION_DENIED, when no authorization allows it.
//! 4. **Prepare** the head for the hop to the application ([`http::prepare`]).
//! 5. **Send** it once: no deadline and no retries here (they are the caller's
//!    business, on its outbound side); `--response-timeout` bounds the wait.
//! 6. **Answer** the caller ([`Answer::respond`]).

use std::time::Instant;

use ::http::{Request, Response};
use hyper::body::Incoming;

use crate::http::{self, orig_proto, Answer, ConnContext, Prepared, ProxyBody, Target, Unanswered};
use crate::retry::RequestBody;

/// Handles one request for the local application.
pub(crate) async fn forward(
    ctx: &ConnContext,
    mut req: Request<Incoming>,
    start: Instant,
    unanswered: &mut Unanswered,
) -> Response<ProxyBody> {
    // HTTP/1 carried over HTTP/2 by the caller's proxy goes to the application as the
    // HTTP/1 request it is, and its response says so.
    if orig_proto::downgrade(&mut req) {
        let mut rsp = answer(ctx, req, start, unanswered).await;
        orig_proto::mark_response(&mut rsp);
        return rsp;
    }
    answer(ctx, req, start, unanswered).await
}

async fn answer(
    ctx: &ConnContext,
    mut req: Request<Incoming>,
    start: Instant,
    unanswered: &mut Unanswered,
) -> Response<ProxyBody> {
    let grpc = http::is_grpc(req.headers());
    let target = match ctx.resolve(&req).await {
        Ok(target) => target,
        Err(unresolved) => return ctx.unresolved(unresolved, grpc, start),
    };
    let route = ctx.count_request(&target);
    unanswered.counted(route.clone());
    if let Err(denied) = super::authorize::http(ctx).await {
        return ctx.error_response(route, grpc, start, denied);
    }
    let Prepared { version, upgrade } = match http::prepare(&mut req, &target.authority) {
        Ok(prepared) => prepared,
        Err(e) => return ctx.error_response(route, grpc, start, e),
    };
    let Target {
        authority,
        endpoint,
        picked,
        ..
    } = target;
    let result = http::attempt(
        ctx,
        endpoint,
        version,
        None,
        req.map(RequestBody::Stream),
        ctx.shared.config.response_timeout,
        None,
    )
    .await;
    Answer {
        route,
        start,
        grpc,
        version,
        upgrade,
        authority,
        endpoint,
        picked,
        retries: 0,
        deadline: None,
    }
    .respond(ctx, result)
}
