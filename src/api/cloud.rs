//! `/v1/cloud`: rented machines, handled by the cloud actor (not the daemon's loop).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

use super::types::{
    CloudListResponse, CloudReleaseRequest, CloudReleaseResponse, CloudRentRequest,
    CloudRentResponse,
};
use super::{ApiResult, Ctx, check_token, err};

pub(super) async fn list(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
) -> ApiResult<CloudListResponse> {
    check_token(&ctx, &headers)?;
    Ok(Json(ctx.cloud.list()))
}

pub(super) async fn rent(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Json(req): Json<CloudRentRequest>,
) -> ApiResult<CloudRentResponse> {
    check_token(&ctx, &headers)?;
    ctx.cloud
        .rent(req)
        .await
        .map(Json)
        .map_err(|e| err(StatusCode::BAD_REQUEST, e))
}

pub(super) async fn release(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Json(req): Json<CloudReleaseRequest>,
) -> ApiResult<CloudReleaseResponse> {
    check_token(&ctx, &headers)?;
    ctx.cloud
        .release(req)
        .await
        .map(Json)
        .map_err(|e| err(StatusCode::SERVICE_UNAVAILABLE, e))
}
