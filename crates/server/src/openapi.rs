//! `/v1/openapi.json`, generated from the wire types and handler annotations.

use axum::Json;
use sluice_proto as proto;
use utoipa::OpenApi;

use crate::api;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        description = "Durable job queues over HTTP/JSON. Errors use ErrorResponse."
    ),
    paths(
        api::enqueue,
        api::enqueue_batch,
        api::get_job,
        api::cancel_job,
        api::retry_job,
        api::heartbeat,
        api::ack,
        api::fail,
        api::ack_batch,
        api::fail_batch,
        api::lease,
        api::list_queues,
        api::get_queue,
        api::list_jobs,
        api::pause_queue,
        api::resume_queue,
        api::purge_queue,
        api::healthz,
        api::readyz
    ),
    components(schemas(
        proto::ErrorResponse,
        proto::ErrorBody,
        proto::ErrorDetail,
        proto::Backoff,
        proto::JobSpec,
        proto::EnqueueBatchRequest,
        proto::EnqueueResult,
        proto::EnqueueBatchResponse,
        proto::JobState,
        proto::Attempt,
        proto::Lease,
        proto::Job,
        proto::LeaseRequest,
        proto::LeasedJob,
        proto::LeaseResponse,
        proto::HeartbeatRequest,
        proto::HeartbeatResponse,
        proto::AckRequest,
        proto::FailRequest,
        proto::AckItem,
        proto::AckBatchRequest,
        proto::FailItem,
        proto::FailBatchRequest,
        proto::ItemResult,
        proto::BatchResultResponse,
        proto::StateCounts,
        proto::QueueInfo,
        proto::QueueList,
        proto::PurgeResponse,
        proto::JobList,
    ))
)]
pub struct ApiDoc;

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
