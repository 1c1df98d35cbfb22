//! Consumer groups: members join, heartbeat and leave; each change of membership starts a
//! new generation (logged) and reassigns the stream's partitions with the group's
//! strategy; commits from an older generation are refused. Membership is in memory:
//! after a restart members rejoin, and the logged generation keeps counting up.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::{ApiJson, AppState};
use crate::error::ApiError;

/// How a group's partitions are shared among its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Each member a contiguous range of partitions (Kafka's default).
    #[default]
    Range,
    /// Partition i to the i-th member, round the members.
    RoundRobin,
    /// Members keep what they had where the counts stay balanced; the rest moves.
    Sticky,
}

/// A member not heard from (join, heartbeat, commit) for its session timeout leaves.
pub const SESSION_TIMEOUT_MS_DEFAULT: u64 = 10_000;
pub const SESSION_TIMEOUT_MS_MAX: u64 = 300_000;
/// Members one group may have.
pub const MEMBERS_MAX: usize = 1_000;

/// Partitions `0..partitions` shared among `members` (sorted by id) by `strategy`;
/// `previous` is the last assignment (for sticky).
pub fn assign(
    strategy: Strategy,
    partitions: u32,
    members: &[String],
    previous: &BTreeMap<String, Vec<u32>>,
) -> BTreeMap<String, Vec<u32>> {
    let mut out: BTreeMap<String, Vec<u32>> =
        members.iter().map(|m| (m.clone(), Vec::new())).collect();
    let m = members.len() as u32;
    if m == 0 {
        return out;
    }
    match strategy {
        Strategy::Range => {
            let (each, extra) = (partitions / m, partitions % m);
            let mut next = 0;
            for (i, member) in members.iter().enumerate() {
                let count = each + u32::from((i as u32) < extra);
                out.insert(member.clone(), (next..next + count).collect());
                next += count;
            }
        }
        Strategy::RoundRobin => {
            for p in 0..partitions {
                if let Some(list) = out.get_mut(&members[(p % m) as usize]) {
                    list.push(p);
                }
            }
        }
        Strategy::Sticky => {
            // Each member may hold `each` partitions, `extra` of them one more.
            let (each, mut extra) = ((partitions / m) as usize, (partitions % m) as usize);
            let mut taken = vec![false; partitions as usize];
            for member in members {
                let kept: Vec<u32> = previous
                    .get(member)
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|&p| p < partitions && !taken[p as usize])
                    .collect();
                let mut room = each;
                if kept.len() > each && extra > 0 {
                    room += 1;
                    extra -= 1;
                }
                let list = out.entry(member.clone()).or_default();
                for p in kept.into_iter().take(room) {
                    taken[p as usize] = true;
                    list.push(p);
                }
            }
            // The rest, one at a time, to whoever holds fewest (then by id).
            for p in 0..partitions {
                if taken[p as usize] {
                    continue;
                }
                let Some(fewest) = members
                    .iter()
                    .min_by_key(|m| out.get(*m).map_or(0, Vec::len))
                    .cloned()
                else {
                    break;
                };
                if let Some(list) = out.get_mut(&fewest) {
                    list.push(p);
                }
            }
            for list in out.values_mut() {
                list.sort_unstable();
            }
        }
    }
    out
}

struct Member {
    last_seen: Instant,
    session_timeout: Duration,
}

#[derive(Default)]
struct Group {
    strategy: Strategy,
    generation: u64,
    members: BTreeMap<String, Member>,
    assignment: BTreeMap<String, Vec<u32>>,
}

/// Live membership of every group, by `(stream, group)`.
#[derive(Default)]
pub struct Membership {
    groups: Mutex<HashMap<(String, String), Group>>,
    next_member: std::sync::atomic::AtomicU64,
}

impl Membership {
    /// Members whose session ran out, by group.
    pub fn expired(&self) -> Vec<(String, String)> {
        let now = Instant::now();
        let mut groups = self.groups.lock();
        let mut changed = Vec::new();
        for (key, group) in groups.iter_mut() {
            let before = group.members.len();
            group
                .members
                .retain(|_, m| now.saturating_duration_since(m.last_seen) <= m.session_timeout);
            if group.members.len() != before {
                changed.push(key.clone());
            }
        }
        changed
    }
}

// ---- wire types -------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// Rejoin as this member (after a rebalance); a new id is given when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    /// `range` (default), `round_robin` or `sticky`; the group takes the last joiner's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Default 10,000; at most 300,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberRequest {
    pub member_id: String,
    pub generation: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CommitOffset {
    pub partition: u32,
    /// The next offset to read (one past the last record processed).
    pub offset: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    pub member_id: String,
    pub generation: u64,
    pub offsets: Vec<CommitOffset>,
}

/// What a member holds: its partitions in this generation and where to start them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Assignment {
    pub member_id: String,
    pub generation: u64,
    pub partitions: Vec<u32>,
    /// Committed offsets of those partitions (absent: start from the earliest).
    pub offsets: Vec<CommitOffset>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemberInfo {
    pub member_id: String,
    pub partitions: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PartitionLag {
    pub partition: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<u64>,
    pub latest: u64,
    /// Records after the committed offset (from the earliest kept when none).
    pub lag: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupInfo {
    pub stream: String,
    pub group: String,
    pub generation: u64,
    pub strategy: Strategy,
    pub members: Vec<MemberInfo>,
    pub partitions: Vec<PartitionLag>,
}

// ---- handlers ---------------------------------------------------------------------------

fn member_unknown(member: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "unknown_member",
        format!("member {member} is not in the group (its session ran out?): join again"),
    )
}

fn stale(current: u64, given: u64) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "stale_generation",
        format!("the group is at generation {current}, not {given}: join again"),
    )
}

/// Starts a new generation (logged) and reassigns; called with membership changed.
async fn rebalance(
    broker: &crate::broker::Broker,
    stream: &str,
    group: &str,
) -> Result<u64, ApiError> {
    let (generation, partitions) = broker
        .execute(|s, _| {
            let partitions = s
                .streams()
                .streams
                .get(stream)
                .map_or(0, |spec| spec.partitions);
            let (event, generation) = s.next_generation(stream, group)?;
            Ok((event, (generation, partitions)))
        })
        .await?;
    let mut groups = broker.groups.groups.lock();
    let entry = groups
        .entry((stream.to_owned(), group.to_owned()))
        .or_default();
    let members: Vec<String> = entry.members.keys().cloned().collect();
    entry.assignment = assign(entry.strategy, partitions, &members, &entry.assignment);
    entry.generation = generation;
    Ok(generation)
}

async fn assignment_of(
    app: &AppState,
    stream: &str,
    group: &str,
    member: &str,
) -> Result<Assignment, ApiError> {
    let broker = app.broker()?;
    let (generation, partitions) = {
        let groups = broker.groups.groups.lock();
        let entry = groups
            .get(&(stream.to_owned(), group.to_owned()))
            .ok_or_else(|| member_unknown(member))?;
        if !entry.members.contains_key(member) {
            return Err(member_unknown(member));
        }
        (
            entry.generation,
            entry.assignment.get(member).cloned().unwrap_or_default(),
        )
    };
    let offsets = broker
        .read(|s, _| {
            let committed = s.group(stream, group);
            Ok(partitions
                .iter()
                .filter_map(|p| {
                    let offset = *committed?.offsets.get(p)?;
                    Some(CommitOffset {
                        partition: *p,
                        offset,
                    })
                })
                .collect())
        })
        .await?;
    Ok(Assignment {
        member_id: member.to_owned(),
        generation,
        partitions,
        offsets,
    })
}

#[utoipa::path(post, path = "/v1/streams/{stream}/groups/{group}/join", tag = "streams", params(("stream" = String, Path, description = "Stream name"), ("group" = String, Path, description = "Group name", pattern = "^[A-Za-z0-9_.:-]{1,128}$")), request_body = JoinRequest, responses((status = 200, body = Assignment), (status = 400, description = "bad input", body = sluice_proto::ErrorResponse), (status = 404, body = sluice_proto::ErrorResponse), (status = 429, description = "too many members or groups", body = sluice_proto::ErrorResponse)))]
pub async fn join(
    app: axum::extract::State<AppState>,
    Path((stream, group)): Path<(String, String)>,
    ApiJson(request): ApiJson<JoinRequest>,
) -> Result<Json<Assignment>, ApiError> {
    let session = request
        .session_timeout_ms
        .unwrap_or(SESSION_TIMEOUT_MS_DEFAULT);
    if session == 0 || session > SESSION_TIMEOUT_MS_MAX {
        return Err(ApiError::bad_input(
            "session_timeout_ms",
            format!("must be 1 to {SESSION_TIMEOUT_MS_MAX}"),
        ));
    }
    if request
        .member_id
        .as_ref()
        .is_some_and(|m| m.is_empty() || m.len() > 256)
    {
        return Err(ApiError::bad_input("member_id", "1 to 256 bytes"));
    }
    let broker = app.broker()?;
    let member = request.member_id.clone().unwrap_or_else(|| {
        let n = broker
            .groups
            .next_member
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{group}-{}-{n}", crate::broker::system_now_ms())
    });
    {
        let mut groups = broker.groups.groups.lock();
        let entry = groups.entry((stream.clone(), group.clone())).or_default();
        if !entry.members.contains_key(&member) && entry.members.len() >= MEMBERS_MAX {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_members",
                format!("at most {MEMBERS_MAX} members per group"),
            ));
        }
        if let Some(strategy) = request.strategy {
            entry.strategy = strategy;
        }
        entry.members.insert(
            member.clone(),
            Member {
                last_seen: Instant::now(),
                session_timeout: Duration::from_millis(session),
            },
        );
    }
    if let Err(error) = rebalance(broker, &stream, &group).await {
        // Not joined after all (no stream, bad name): leave no trace.
        let mut groups = broker.groups.groups.lock();
        if let Some(entry) = groups.get_mut(&(stream.clone(), group.clone())) {
            entry.members.remove(&member);
        }
        return Err(error);
    }
    Ok(Json(assignment_of(&app, &stream, &group, &member).await?))
}

#[utoipa::path(post, path = "/v1/streams/{stream}/groups/{group}/heartbeat", operation_id = "group_heartbeat", tag = "streams", params(("stream" = String, Path, description = "Stream name"), ("group" = String, Path, description = "Group name")), request_body = MemberRequest, responses((status = 200, description = "the member's assignment in the current generation: a different generation than sent means a rebalance happened", body = Assignment), (status = 400, description = "bad input", body = sluice_proto::ErrorResponse), (status = 409, description = "unknown member", body = sluice_proto::ErrorResponse)))]
pub async fn heartbeat(
    app: axum::extract::State<AppState>,
    Path((stream, group)): Path<(String, String)>,
    ApiJson(request): ApiJson<MemberRequest>,
) -> Result<Json<Assignment>, ApiError> {
    {
        let broker = app.broker()?;
        let mut groups = broker.groups.groups.lock();
        let member = groups
            .get_mut(&(stream.clone(), group.clone()))
            .and_then(|g| g.members.get_mut(&request.member_id))
            .ok_or_else(|| member_unknown(&request.member_id))?;
        member.last_seen = Instant::now();
    }
    Ok(Json(
        assignment_of(&app, &stream, &group, &request.member_id).await?,
    ))
}

#[utoipa::path(post, path = "/v1/streams/{stream}/groups/{group}/leave", tag = "streams", params(("stream" = String, Path, description = "Stream name"), ("group" = String, Path, description = "Group name")), request_body = MemberRequest, responses((status = 204, description = "left; the others are rebalanced"), (status = 400, description = "bad input", body = sluice_proto::ErrorResponse), (status = 409, description = "unknown member", body = sluice_proto::ErrorResponse)))]
pub async fn leave(
    app: axum::extract::State<AppState>,
    Path((stream, group)): Path<(String, String)>,
    ApiJson(request): ApiJson<MemberRequest>,
) -> Result<StatusCode, ApiError> {
    {
        let broker = app.broker()?;
        let mut groups = broker.groups.groups.lock();
        let removed = groups
            .get_mut(&(stream.clone(), group.clone()))
            .and_then(|g| g.members.remove(&request.member_id));
        if removed.is_none() {
            return Err(member_unknown(&request.member_id));
        }
    }
    rebalance(app.broker()?, &stream, &group).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/streams/{stream}/groups/{group}/commit", tag = "streams", params(("stream" = String, Path, description = "Stream name"), ("group" = String, Path, description = "Group name")), request_body = CommitRequest, responses((status = 204, description = "committed (durable)"), (status = 400, description = "bad input", body = sluice_proto::ErrorResponse), (status = 409, description = "stale generation, unknown member, or a partition not assigned to it", body = sluice_proto::ErrorResponse)))]
pub async fn commit(
    app: axum::extract::State<AppState>,
    Path((stream, group)): Path<(String, String)>,
    ApiJson(request): ApiJson<CommitRequest>,
) -> Result<StatusCode, ApiError> {
    let broker = app.broker()?;
    {
        let mut groups = broker.groups.groups.lock();
        let entry = groups
            .get_mut(&(stream.clone(), group.clone()))
            .ok_or_else(|| member_unknown(&request.member_id))?;
        if entry.generation != request.generation {
            return Err(stale(entry.generation, request.generation));
        }
        let owned = entry
            .assignment
            .get(&request.member_id)
            .cloned()
            .unwrap_or_default();
        let member = entry
            .members
            .get_mut(&request.member_id)
            .ok_or_else(|| member_unknown(&request.member_id))?;
        member.last_seen = Instant::now();
        if let Some(other) = request
            .offsets
            .iter()
            .find(|o| !owned.contains(&o.partition))
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_assigned",
                format!(
                    "partition {} is not assigned to {} in generation {}",
                    other.partition, request.member_id, request.generation
                ),
            ));
        }
    }
    let offsets: Vec<(u32, u64)> = request
        .offsets
        .iter()
        .map(|o| (o.partition, o.offset))
        .collect();
    broker
        .execute(|s, _| s.commit_offsets(&stream, &group, request.generation, offsets))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/streams/{stream}/groups/{group}", tag = "streams", params(("stream" = String, Path, description = "Stream name"), ("group" = String, Path, description = "Group name")), responses((status = 200, body = GroupInfo), (status = 404, body = sluice_proto::ErrorResponse)))]
pub async fn get_group(
    app: axum::extract::State<AppState>,
    Path((stream, group)): Path<(String, String)>,
) -> Result<Json<GroupInfo>, ApiError> {
    let broker = app.broker()?.clone();
    Ok(Json(describe(&broker, stream, group).await?))
}

/// The groups of a stream.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupList {
    pub groups: Vec<GroupInfo>,
}

#[utoipa::path(get, path = "/v1/streams/{stream}/groups", tag = "streams", params(("stream" = String, Path, description = "Stream name")), responses((status = 200, body = GroupList), (status = 404, body = sluice_proto::ErrorResponse)))]
pub async fn list_groups(
    app: axum::extract::State<AppState>,
    Path(stream): Path<String>,
) -> Result<Json<GroupList>, ApiError> {
    let broker = app.broker()?.clone();
    let names: Vec<String> = broker
        .read(|s, _| {
            if !s.streams().streams.contains_key(&stream) {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("stream {stream} not found"),
                ));
            }
            Ok(s.groups_of(&stream))
        })
        .await?;
    let mut groups = Vec::with_capacity(names.len());
    for group in names {
        groups.push(describe(&broker, stream.clone(), group).await?);
    }
    Ok(Json(GroupList { groups }))
}

/// A group's generation, members, assignment, committed offsets and lag.
async fn describe(
    broker: &std::sync::Arc<crate::broker::Broker>,
    stream: String,
    group: String,
) -> Result<GroupInfo, ApiError> {
    let (partitions, committed, generation) = broker
        .read(|s, _| {
            let spec = s.streams().streams.get(&stream).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("stream {stream} not found"),
                )
            })?;
            let state = s.group(&stream, &group).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("group {group} of stream {stream} not found"),
                )
            })?;
            Ok((spec.partitions, state.offsets.clone(), state.generation))
        })
        .await?;
    let (strategy, members) = {
        let groups = broker.groups.groups.lock();
        match groups.get(&(stream.clone(), group.clone())) {
            Some(g) => (
                g.strategy,
                g.members
                    .keys()
                    .map(|m| MemberInfo {
                        member_id: m.clone(),
                        partitions: g.assignment.get(m).cloned().unwrap_or_default(),
                    })
                    .collect(),
            ),
            None => (Strategy::default(), Vec::new()),
        }
    };
    let lags = {
        let (broker, stream) = (broker.clone(), stream.clone());
        tokio::task::spawn_blocking(move || {
            (0..partitions)
                .map(|p| {
                    let handle = broker.streams.handle(&stream, p).ok()?;
                    let partition = handle.partition.lock();
                    let latest = handle.readable_end(&partition);
                    let from = committed
                        .get(&p)
                        .copied()
                        .unwrap_or(partition.earliest_offset());
                    Some(PartitionLag {
                        partition: p,
                        committed: committed.get(&p).copied(),
                        latest,
                        lag: latest.saturating_sub(from),
                    })
                })
                .collect::<Option<Vec<_>>>()
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "stream_storage",
                "cannot open a partition",
            )
        })?
    };
    Ok(GroupInfo {
        stream,
        group,
        generation,
        strategy,
        members,
        partitions: lags,
    })
}

/// Rebalances the groups that lost members to session timeouts (from the tick).
pub async fn reap(app_broker: &std::sync::Arc<crate::broker::Broker>) {
    let changed = app_broker.groups.expired();
    for (stream, group) in changed {
        let Ok(generation) = rebalance(app_broker, &stream, &group).await else {
            continue;
        };
        tracing::info!(
            stream,
            group,
            generation,
            "a member's session ran out: rebalanced"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("m{i}")).collect()
    }

    fn counts(a: &BTreeMap<String, Vec<u32>>) -> Vec<usize> {
        a.values().map(Vec::len).collect()
    }

    #[test]
    fn every_strategy_assigns_each_partition_once_and_balanced() {
        for strategy in [Strategy::Range, Strategy::RoundRobin, Strategy::Sticky] {
            for (partitions, members) in [(7u32, 3usize), (3, 5), (12, 4), (1, 1), (0, 2)] {
                let a = assign(strategy, partitions, &names(members), &BTreeMap::new());
                let mut all: Vec<u32> = a.values().flatten().copied().collect();
                all.sort_unstable();
                assert_eq!(all, (0..partitions).collect::<Vec<_>>(), "{strategy:?}");
                let (min, max) = (
                    counts(&a).into_iter().min().unwrap_or(0),
                    counts(&a).into_iter().max().unwrap_or(0),
                );
                assert!(max - min <= 1, "{strategy:?} {partitions}/{members}: {a:?}");
            }
        }
        let range = assign(Strategy::Range, 7, &names(3), &BTreeMap::new());
        assert_eq!(range["m0"], vec![0, 1, 2]);
        assert_eq!(range["m2"], vec![5, 6]);
        let rr = assign(Strategy::RoundRobin, 7, &names(3), &BTreeMap::new());
        assert_eq!(rr["m1"], vec![1, 4]);
    }

    #[test]
    fn sticky_moves_only_what_it_must() {
        let before = assign(Strategy::Sticky, 12, &names(3), &BTreeMap::new());
        // m3 joins: each of the three gives up one partition, nothing else moves.
        let after = assign(Strategy::Sticky, 12, &names(4), &before);
        for m in ["m0", "m1", "m2"] {
            let kept = after[m].iter().filter(|p| before[m].contains(p)).count();
            assert_eq!(kept, 3, "{m}: {:?} -> {:?}", before[m], after[m]);
        }
        assert_eq!(after["m3"].len(), 3);
        // m1 leaves: the others keep theirs and share m1's.
        let members: Vec<String> = ["m0", "m2", "m3"].iter().map(|s| s.to_string()).collect();
        let later = assign(Strategy::Sticky, 12, &members, &after);
        for m in &members {
            assert!(
                after[m].iter().all(|p| later[m].contains(p)),
                "{m} lost one"
            );
        }
    }
}
