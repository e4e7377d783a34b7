//! The store replica's consumer: one thread, one consumer in the tenants' group. A
//! rebalance assigns partitions starting after the last offset this replica applied
//! (so a partition it never held is rebuilt from the topic's beginning) and revokes
//! them after telling their live viewers to reconnect (they find the new owner).
//! Records are applied in topic order per deployment, several deployments at once, one
//! group commit per deployment and poll batch; the offsets are stored for the group's
//! commit only after the append is durable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use logstream_proto::v1 as pb;
use parking_lot::Mutex;
use prost::Message as _;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use super::{Applied, Kafka, PartitionState, offset_mark, partition_for};
use crate::core::Gateway;
use crate::store::{BatchId, DeploymentId, Outcome, StoreError};

/// Most records taken in one poll batch.
const BATCH: usize = 4096;
/// Parallel appliers (distinct deployments) per batch.
const APPLIERS: usize = 8;

/// Offsets this replica applied, by `(topic, partition)`: where an assignment starts.
type AppliedOffsets = Arc<Mutex<HashMap<(String, i32), i64>>>;

struct Ctx {
    state: Arc<Gateway>,
    kafka: Arc<Kafka>,
    applied: AppliedOffsets,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition is an event here (`enable.partition.eof`), not an error.
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if !eof {
            self.state.metrics.kafka_errors.inc();
            tracing::warn!(error = %error, reason, "kafka: client error");
        }
    }
}

impl Ctx {
    fn tenant_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic.strip_prefix(self.kafka.config.topic_prefix.as_str())
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let applied = self.applied.lock().clone();
                for (topic, p) in &parts {
                    let start = applied
                        .get(&(topic.clone(), *p))
                        .map_or(Offset::Beginning, |o| Offset::Offset(o + 1));
                    let _ = tpl.set_partition_offset(topic, *p, start);
                    if let Some(t) = self.tenant_of(topic) {
                        self.kafka.ownership.set(t, *p, PartitionState::CatchingUp);
                    }
                }
                tracing::info!(partitions = ?parts, "kafka: partitions assigned; catching up");
                let assigned = match base.rebalance_protocol() {
                    RebalanceProtocol::Cooperative => base.incremental_assign(tpl),
                    _ => base.assign(tpl),
                };
                if let Err(e) = assigned {
                    tracing::error!(error = %e, "kafka: assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                for (topic, p) in &parts {
                    let Some(tenant) = self.tenant_of(topic) else {
                        continue;
                    };
                    self.kafka.ownership.remove(tenant, *p);
                    let n = self.kafka.topics().get(tenant).copied().unwrap_or(1);
                    self.state
                        .hub
                        .moved(|id| id.tenant == tenant && partition_for(&id.deployment, n) == *p);
                }
                tracing::info!(partitions = ?parts, "kafka: partitions revoked; their viewers reconnect to the new owner");
                let _ = base.commit_consumer_state(CommitMode::Sync);
                let unassigned = match base.rebalance_protocol() {
                    RebalanceProtocol::Cooperative => base.incremental_unassign(tpl),
                    _ => base.unassign(),
                };
                if let Err(e) = unassigned {
                    tracing::error!(error = %e, "kafka: unassign failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "kafka: rebalance error; serving nothing until the next assignment");
                for (topic, p) in &parts {
                    if let Some(t) = self.tenant_of(topic) {
                        self.kafka.ownership.remove(t, *p);
                    }
                }
                let _ = base.unassign();
            }
        }
        self.state
            .metrics
            .kafka_owned_partitions
            .set(self.kafka.ownership.count() as i64);
    }
}

/// One record of a poll batch, owned.
struct Record {
    topic: String,
    partition: i32,
    offset: i64,
    payload: Vec<u8>,
}

/// Starts the consumer thread of `state` (Kafka mode); it ends at shutdown.
pub fn start_consumer(state: Arc<Gateway>) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let kafka = state.kafka.clone().expect("kafka mode");
    let k = &kafka.config;
    let cc = super::client_config(
        k,
        &[
            ("group.id", k.group.clone()),
            ("enable.auto.commit", "true".into()),
            ("enable.auto.offset.store", "false".into()),
            ("auto.offset.reset", "earliest".into()),
            ("enable.partition.eof", "true".into()),
            ("fetch.wait.max.ms", "10".into()),
            // Incremental: a replica joining or leaving moves only the partitions that
            // change hands; the others stay served (their viewers are not disconnected).
            ("partition.assignment.strategy", "cooperative-sticky".into()),
        ],
    )?;
    let applied: AppliedOffsets = Arc::new(Mutex::new(load_applied(&kafka)));
    let ctx = Ctx {
        state: state.clone(),
        kafka: kafka.clone(),
        applied: applied.clone(),
    };
    let consumer: BaseConsumer<Ctx> = cc
        .create_with_context(ctx)
        .map_err(|e| anyhow::anyhow!("kafka: cannot create the consumer: {e}"))?;
    let topics: Vec<String> = k.tenants.iter().map(|t| k.topic(t)).collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .map_err(|e| anyhow::anyhow!("kafka: cannot subscribe to {}: {e}", topics.join(", ")))?;
    {
        let (state, kafka, applied) = (state.clone(), kafka.clone(), applied.clone());
        std::thread::Builder::new()
            .name("kafka-lag".into())
            .spawn(move || lag_loop(state, kafka, applied))?;
    }
    Ok(std::thread::Builder::new()
        .name("kafka-consumer".into())
        .spawn(move || run(state, kafka, consumer, applied))?)
}

fn run(
    state: Arc<Gateway>,
    kafka: Arc<Kafka>,
    consumer: BaseConsumer<Ctx>,
    applied: AppliedOffsets,
) {
    let mut saved = Instant::now();
    let mut dirty = false;
    // Partitions that reached their end, to check against the ones catching up.
    let mut eof: std::collections::HashSet<i32> = std::collections::HashSet::new();
    while !*state.shutdown.borrow() {
        let mut batch = Vec::new();
        let mut wait = Duration::from_millis(100);
        while batch.len() < BATCH {
            match consumer.poll(wait) {
                None => break,
                Some(Ok(m)) => batch.push(Record {
                    topic: m.topic().to_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                }),
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    eof.insert(p);
                }
                Some(Err(e)) => {
                    state.metrics.kafka_errors.inc();
                    tracing::warn!(error = %e, "kafka: consumer error");
                    // Refusals that do not heal by themselves: not ready until a partition
                    // is served again.
                    use rdkafka::types::RDKafkaErrorCode as C;
                    if matches!(
                        e.rdkafka_error_code(),
                        Some(
                            C::GroupAuthorizationFailed
                                | C::TopicAuthorizationFailed
                                | C::SaslAuthenticationFailed
                                | C::UnknownTopicOrPartition
                                // Another consumer in kafka.group assigns eagerly.
                                | C::InconsistentGroupProtocol
                        )
                    ) {
                        kafka
                            .stalled
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    break;
                }
            }
            wait = Duration::ZERO;
        }
        if !batch.is_empty() {
            // `None`: not all of it was applied (shutdown during a retry): store no offset,
            // the next start replays the batch (the marks make that safe).
            let Some(done) = apply(&state, &kafka, batch) else {
                break;
            };
            let mut a = applied.lock();
            for ((topic, p), o) in done {
                let _ = consumer.store_offset(&topic, p, o + 1);
                a.insert((topic, p), o);
            }
            dirty = true;
        }
        if !eof.is_empty() {
            // Everything polled before the end was just applied.
            caught_up(&kafka, &consumer, &applied, &mut eof);
        }
        if dirty && saved.elapsed() >= Duration::from_secs(1) {
            save_applied(&kafka, &applied.lock());
            saved = Instant::now();
            dirty = false;
        }
    }
    save_applied(&kafka, &applied.lock());
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    tracing::info!("kafka: consumer stopped");
}

/// How often `logstream_kafka_consumer_lag_records` is refreshed.
const LAG_INTERVAL: Duration = Duration::from_secs(10);

/// Refreshes `logstream_kafka_consumer_lag_records` every [`LAG_INTERVAL`] on its own
/// thread (a watermark request per owned partition must not stall the consumer's
/// polling; librdkafka's statistics events are not delivered to a `BaseConsumer`'s
/// poll), the first time one second after start, until shutdown.
fn lag_loop(state: Arc<Gateway>, kafka: Arc<Kafka>, applied: AppliedOffsets) {
    let mut wait = Duration::from_secs(1);
    loop {
        let mut shutdown = state.shutdown.clone();
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if *shutdown.borrow_and_update() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        publish_lag(&state, &kafka, &applied);
        wait = LAG_INTERVAL;
    }
}

/// Sets the lag of every partition this replica owns (serving or catching up): the
/// broker's high watermark minus the next offset to apply here. A partition whose
/// watermark cannot be read (500 ms each) keeps no series until the next round.
fn publish_lag(state: &Gateway, kafka: &Kafka, applied: &AppliedOffsets) {
    let mut lags = Vec::new();
    for tenant in kafka.topics().keys() {
        let topic = kafka.config.topic(tenant);
        for (p, _) in kafka.ownership.of(tenant) {
            let Ok((low, high)) = kafka.watermarks(&topic, p, Duration::from_millis(500)) else {
                continue;
            };
            let next = applied
                .lock()
                .get(&(topic.clone(), p))
                .map_or(low, |o| o + 1);
            lags.push((topic.clone(), p, (high - next).max(0)));
        }
    }
    let gauge = &state.metrics.kafka_lag;
    gauge.reset();
    for (topic, p, lag) in lags {
        gauge.with_label_values(&[&topic, &p.to_string()]).set(lag);
    }
}

/// Partitions that reached their end after everything polled was applied: caught up.
/// With one topic the partition number names it; with several (one per tenant), the
/// applied offset is checked against the high watermark (kept for the next round when
/// that cannot be read, or new records came meanwhile: the end is reached again).
fn caught_up(
    kafka: &Kafka,
    consumer: &BaseConsumer<Ctx>,
    applied: &AppliedOffsets,
    eof: &mut std::collections::HashSet<i32>,
) {
    let one_topic = kafka.topics().len() == 1;
    let catching_up = kafka.ownership.catching_up();
    eof.retain(|p| catching_up.iter().any(|(_, q)| q == p));
    for (tenant, p) in catching_up {
        if !eof.contains(&p) {
            continue;
        }
        let topic = kafka.config.topic(&tenant);
        let done = one_topic
            || consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(2))
                .is_ok_and(|(low, high)| {
                    let next = applied
                        .lock()
                        .get(&(topic.clone(), p))
                        .map_or(low, |o| o + 1);
                    next >= high
                });
        if done {
            tracing::info!(
                topic,
                partition = p,
                "kafka: partition caught up; serving it"
            );
            kafka.ownership.set(&tenant, p, PartitionState::Serving);
            if one_topic {
                eof.remove(&p);
            }
        }
    }
    kafka
        .stalled
        .store(false, std::sync::atomic::Ordering::Relaxed);
}

/// One decoded record.
struct Op {
    partition: i32,
    offset: i64,
    mark: BatchId,
    kind: OpKind,
}

enum OpKind {
    Lines {
        records: Vec<logstream_model::LogRecord>,
        client: Option<BatchId>,
    },
    Complete {
        status: Outcome,
        exit_code: i32,
    },
}

/// Applies a poll batch; returns the highest offset applied per partition, or `None`
/// when some deployment could not be applied (the gateway is shutting down).
fn apply(
    state: &Arc<Gateway>,
    kafka: &Arc<Kafka>,
    batch: Vec<Record>,
) -> Option<HashMap<(String, i32), i64>> {
    let mut last: HashMap<(String, i32), i64> = HashMap::new();
    let mut groups: Vec<(DeploymentId, Vec<Op>)> = Vec::new();
    let mut index: HashMap<DeploymentId, usize> = HashMap::new();
    for r in batch {
        let slot = last
            .entry((r.topic.clone(), r.partition))
            .or_insert(r.offset);
        *slot = (*slot).max(r.offset);
        let tenant = r
            .topic
            .strip_prefix(kafka.config.topic_prefix.as_str())
            .unwrap_or(&r.topic)
            .to_owned();
        let Some((deployment, kind)) = decode(&r.payload) else {
            state.metrics.kafka_skipped.inc();
            tracing::error!(
                topic = r.topic,
                partition = r.partition,
                offset = r.offset,
                "kafka: a record that is not a KafkaEntry was skipped"
            );
            continue;
        };
        let id = DeploymentId::new(tenant, deployment);
        let i = *index.entry(id.clone()).or_insert_with(|| {
            groups.push((id, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(Op {
            partition: r.partition,
            offset: r.offset,
            mark: offset_mark(&r.topic, r.partition, r.offset),
            kind,
        });
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..APPLIERS.min(groups.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((id, ops)) = groups.get(i) else {
                        break;
                    };
                    if !apply_deployment(state, kafka, id, ops) {
                        failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    (!failed.into_inner()).then_some(last)
}

fn decode(payload: &[u8]) -> Option<(String, OpKind)> {
    let entry = pb::KafkaEntry::decode(payload).ok()?;
    logstream_model::validate_deployment_id(&entry.deployment).ok()?;
    let kind = match entry.op? {
        pb::kafka_entry::Op::Lines(l) => OpKind::Lines {
            client: (!l.source.is_empty()).then_some(BatchId {
                source: l.source,
                batch_id: l.batch_id,
            }),
            records: l
                .lines
                .into_iter()
                .map(crate::grpc::record_from_pb)
                .collect(),
        },
        pb::kafka_entry::Op::Complete(c) => OpKind::Complete {
            status: Outcome::parse(&c.status)?,
            exit_code: c.exit_code.unwrap_or(0),
        },
    };
    Some((entry.deployment, kind))
}

/// Applies one deployment's records in order; retries (the whole run: marks make that
/// safe) while the store fails, so an offset is never stored past a record that was not
/// applied. Meanwhile the partition is not served here (its copy is behind: requests go
/// to `not_owner`, routers prefer a serving owner) and `/readyz` fails, so a replica
/// whose disk broke stops claiming its partitions; it serves them again once it caught
/// up. `false`: given up at shutdown.
fn apply_deployment(state: &Arc<Gateway>, kafka: &Kafka, id: &DeploymentId, ops: &[Op]) -> bool {
    let mut backoff = Duration::from_millis(100);
    loop {
        match try_apply(state, kafka, id, ops) {
            Ok(()) => return true,
            Err(e) if *state.shutdown.borrow() => {
                tracing::warn!(error = %e, deployment = %id, "kafka: not applied at shutdown; replayed at the next start");
                return false;
            }
            Err(e) => {
                state.metrics.kafka_errors.inc();
                kafka
                    .stalled
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                if let Some(p) = ops.first().map(|o| o.partition)
                    && kafka.ownership.state(&id.tenant, p).is_some()
                {
                    kafka
                        .ownership
                        .set(&id.tenant, p, PartitionState::CatchingUp);
                }
                tracing::error!(error = %e, deployment = %id, "kafka: applying failed; retrying (the partition is not served meanwhile)");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn try_apply(
    state: &Arc<Gateway>,
    kafka: &Kafka,
    id: &DeploymentId,
    ops: &[Op],
) -> Result<(), StoreError> {
    let log = state.store.log(id, true)?.expect("created");
    let mut i = 0;
    while i < ops.len() {
        // A run of line batches: one group commit.
        let run: Vec<&Op> = ops[i..]
            .iter()
            .take_while(|o| matches!(o.kind, OpKind::Lines { .. }))
            .collect();
        if !run.is_empty() {
            let batches = run
                .iter()
                .map(|o| match &o.kind {
                    OpKind::Lines { records, client } => {
                        let mut marks = vec![o.mark.clone()];
                        marks.extend(client.clone());
                        (records.clone(), marks)
                    }
                    OpKind::Complete { .. } => unreachable!("a run of lines"),
                })
                .collect();
            let results = log.append_all(batches);
            for (o, r) in run.iter().zip(results) {
                let applied = match r {
                    Ok(outcome) => Applied::Appended(outcome),
                    Err(e @ StoreError::Completed { .. }) => Applied::Failed(e),
                    Err(e) => return Err(e),
                };
                if let Applied::Appended(a) = &applied
                    && !a.duplicate
                {
                    state.metrics.kafka_applied.inc();
                }
                kafka.done(&id.tenant, o.partition, o.offset, applied);
            }
            i += run.len();
            continue;
        }
        let o = &ops[i];
        let OpKind::Complete { status, exit_code } = o.kind else {
            unreachable!("not lines")
        };
        let applied = match log.complete(status, exit_code) {
            Ok(c) => Applied::Completed(c),
            Err(e @ StoreError::Completed { .. }) => Applied::Failed(e),
            Err(e) => return Err(e),
        };
        kafka.done(&id.tenant, o.partition, o.offset, applied);
        i += 1;
    }
    Ok(())
}

fn applied_file(kafka: &Kafka) -> std::path::PathBuf {
    kafka.state_dir.join("applied.json")
}

fn load_applied(kafka: &Kafka) -> HashMap<(String, i32), i64> {
    let Ok(text) = std::fs::read_to_string(applied_file(kafka)) else {
        return HashMap::new();
    };
    let map: HashMap<String, i64> = serde_json::from_str(&text).unwrap_or_default();
    map.into_iter()
        .filter_map(|(k, o)| {
            let (topic, p) = k.rsplit_once(':')?;
            Some(((topic.to_owned(), p.parse().ok()?), o))
        })
        .collect()
}

/// Saves the applied offsets (atomically: a torn file would restart partitions from
/// the beginning, which is safe but slow). Applying again what the file lags behind is
/// harmless: the offset marks make it a no-op.
fn save_applied(kafka: &Kafka, applied: &HashMap<(String, i32), i64>) {
    let map: HashMap<String, i64> = applied
        .iter()
        .map(|((t, p), o)| (format!("{t}:{p}"), *o))
        .collect();
    let path = applied_file(kafka);
    let tmp = path.with_extension("json.tmp");
    let result = (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(serde_json::to_string(&map).unwrap_or_default().as_bytes())?;
        f.sync_data()?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = result {
        tracing::warn!(error = %e, path = %path.display(), "kafka: cannot save the applied offsets");
    }
}
