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
        api::get_queue_key,
        api::list_jobs,
        api::pause_queue,
        api::resume_queue,
        api::purge_queue,
        api::move_jobs,
        api::set_queue_limits,
        api::create_batch,
        api::get_batch,
        api::set_cron,
        api::list_crons,
        api::get_cron,
        api::remove_cron,
        api::healthz,
        crate::live::events,
        api::readyz,
        api::prometheus_metrics,
        api::register_worker,
        api::get_worker,
        api::list_workers,
        api::remove_worker,
        crate::analytics::queue_history,
        crate::analytics::server_history,
        crate::analytics::queue_insights,
        crate::analytics::server_health,
        crate::alerting::set_rule,
        crate::alerting::get_rule,
        crate::alerting::remove_rule,
        crate::alerting::list_rules,
        crate::alerting::firing,
        crate::alerting::history,
        crate::alerting::set_silence,
        crate::alerting::list_silences,
        crate::alerting::remove_silence,
        crate::streams::set_stream,
        crate::streams::get_stream,
        crate::streams::list_streams,
        crate::streams::produce,
        crate::streams::fetch,
        crate::streams::set_feed,
        crate::streams::list_feeds,
        crate::streams::remove_feed,
        crate::groups::join,
        crate::groups::heartbeat,
        crate::groups::leave,
        crate::groups::commit,
        crate::groups::get_group,
        crate::groups::list_groups
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
        proto::BatchRequest,
        proto::BatchCreated,
        proto::BatchInfo,
        proto::CronRequest,
        proto::CronInfo,
        proto::CronList,
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
        proto::QueueRecent,
        proto::WorkerBeat,
        proto::WorkerJob,
        proto::WorkerInfo,
        proto::WorkerList,
        proto::HistoryPoint,
        proto::QueueHistory,
        proto::ServerHistory,
        proto::TrendInfo,
        proto::AnomalyInfo,
        proto::ForecastPointInfo,
        proto::ForecastInfo,
        proto::BacklogInfo,
        proto::RecommendationInfo,
        proto::HealthComponentInfo,
        proto::HealthInfo,
        proto::QueueInsights,
        proto::QueueHealth,
        proto::ServerHealth,
        proto::NotifierSpec,
        proto::AlertRuleSpec,
        proto::AlertRuleInfo,
        proto::AlertRuleList,
        proto::AlertTransitionInfo,
        proto::AlertHistory,
        proto::SilenceSpec,
        proto::SilenceInfo,
        proto::SilenceList,
        crate::streams::StreamRequest,
        crate::streams::PartitionInfo,
        crate::streams::StreamInfo,
        crate::streams::StreamList,
        crate::streams::ProduceRecord,
        crate::streams::ProduceRequest,
        crate::streams::ProducedOffset,
        crate::streams::ProduceResponse,
        crate::streams::FetchedRecord,
        crate::streams::FetchResponse,
        crate::streams::FeedRequest,
        crate::streams::FeedPartition,
        crate::streams::FeedInfo,
        crate::streams::FeedList,
        crate::groups::Strategy,
        crate::groups::JoinRequest,
        crate::groups::MemberRequest,
        crate::groups::CommitOffset,
        crate::groups::CommitRequest,
        crate::groups::Assignment,
        crate::groups::MemberInfo,
        crate::groups::PartitionLag,
        crate::groups::GroupInfo,
        proto::QueueLimits,
        proto::KeyInfo,
        proto::RateLimit,
        proto::QueueList,
        proto::PurgeResponse,
        proto::MoveRequest,
        proto::MoveResponse,
        proto::JobList,
    ))
)]
pub struct ApiDoc;

pub async fn serve() -> Json<serde_json::Value> {
    Json(document())
}

/// The OpenAPI document as served.
///
/// utoipa 5.5 serializes a response's Link Objects with Rust field names
/// (`operation_id`, `request_body`); OpenAPI names them `operationId`, `operationRef` and
/// `requestBody`, and tools ignore or reject the others. The names are fixed here.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let operations = doc
        .get_mut("paths")
        .and_then(|p| p.as_object_mut())
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut());
    for operation in operations {
        let links = operation
            .get_mut("responses")
            .and_then(|r| r.as_object_mut())
            .into_iter()
            .flat_map(|responses| responses.values_mut())
            .filter_map(|response| response.get_mut("links")?.as_object_mut())
            .flat_map(|links| links.values_mut())
            .filter_map(|link| link.as_object_mut());
        for link in links {
            for (from, to) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(value) = link.remove(from) {
                    link.insert(to.to_owned(), value);
                }
            }
        }
    }
    doc
}
