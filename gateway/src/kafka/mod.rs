//! Kafka mode (`[kafka]`): ingest produces each batch to the tenant's topic, the store
//! replicas consume the topics in one consumer group, and partitions are the shards.
//!
//! ```text
//! ingest (HTTP, gRPC) ── redact, split, stamp ──> produce KafkaEntry (idempotent, acks=all)
//!        │ partition = murmur2(deployment) % partitions            │ acknowledged
//!        ▼                                                         ▼
//!   answer once the owner applied it (or `applied: false`)   consumer (this process's
//!                                                            thread, one group): assign
//!                                                            seqs, append, fsync, then
//!                                                            store the offset (commit)
//! ```
//!
//! Each store replica is a materialised view of the partitions it owns: a block records
//! the partition offset it came from (`kafka/<topic>/<partition>` batch marks), so a
//! replay after a crash or a rebalance applies nothing twice, and a replica that takes a
//! partition over rebuilds it from the topic, starting after the last offset it applied
//! itself (`<data_dir>/kafka/applied.json`; from the beginning if it never held it).
//! Seqs are assigned in topic order by the same rules on every replica, so they are the
//! same wherever the partition is rebuilt: cursors stay valid across owners. Until a
//! taken-over partition has caught up with the end the topic had at assignment, its
//! deployments answer `unavailable` (retryable).

mod consume;
mod ownership;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use logstream_model::LogRecord;
use logstream_model::config::KafkaConfig;
use logstream_proto::v1 as pb;
use parking_lot::Mutex;
use prost::Message;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::oneshot;

pub use consume::start_consumer;
pub use ownership::{Ownership, PartitionState};

use crate::store::{AppendOutcome, BatchId, Completion, DeploymentId, Outcome, StoreError};

/// What the owner did with one record of the topic.
#[derive(Debug, Clone)]
pub enum Applied {
    Appended(AppendOutcome),
    Completed(Completion),
    Failed(StoreError),
}

/// Kafka's default partitioner (the Java client's `murmur2(key) & 0x7fffffff % n`), so a
/// deployment's partition is the same for every producer and for the routing.
pub fn partition_for(deployment: &str, partitions: i32) -> i32 {
    (murmur2(deployment.as_bytes()) & 0x7fff_ffff) % partitions.max(1)
}

fn murmur2(data: &[u8]) -> i32 {
    const M: i32 = 0x5bd1_e995;
    let mut h: i32 = 0x9747_b28c_u32 as i32 ^ data.len() as i32;
    let chunks = data.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        let mut k = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= ((k as u32) >> 24) as i32;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if rest.len() == 3 {
        h ^= i32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= i32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= i32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= ((h as u32) >> 13) as i32;
    h = h.wrapping_mul(M);
    h ^= ((h as u32) >> 15) as i32;
    h
}

/// The batch mark of a topic record: its source names the partition, its id is the
/// offset plus one (ids start above 0).
pub fn offset_mark(topic: &str, partition: i32, offset: i64) -> BatchId {
    BatchId {
        source: format!("kafka/{topic}/{partition}"),
        batch_id: offset as u64 + 1,
    }
}

/// A client's librdkafka settings: what every client of `k` shares (brokers, security),
/// then the client's own `settings`, then `kafka.properties` (last, so they tune either).
fn client_config(k: &KafkaConfig, settings: &[(&str, String)]) -> anyhow::Result<ClientConfig> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set(
            "security.protocol",
            k.security_protocol.to_ascii_lowercase(),
        )
        .set("client.id", format!("logstream-{}", hostname()));
    if let Some(m) = &k.sasl_mechanism {
        c.set("sasl.mechanism", m);
    }
    if let Some(u) = &k.sasl_username {
        c.set("sasl.username", u);
    }
    if let Some(f) = &k.sasl_password_file {
        let password = std::fs::read_to_string(f).map_err(|e| {
            anyhow::anyhow!(
                "invalid configuration: kafka.sasl_password_file {}: {e}",
                f.display()
            )
        })?;
        c.set("sasl.password", password.trim_end_matches(['\n', '\r']));
    }
    for (key, file) in [
        ("ssl.ca.location", &k.ssl_ca_file),
        ("ssl.certificate.location", &k.ssl_cert_file),
        ("ssl.key.location", &k.ssl_key_file),
    ] {
        // A client certificate or key the Secret does not hold (the operator renders
        // the paths whether or not it has them) means no client certificate.
        if let Some(f) = file
            && (key == "ssl.ca.location" || f.exists())
        {
            c.set(key, f.display().to_string());
        }
    }
    for (key, value) in settings {
        c.set(*key, value);
    }
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    Ok(c)
}

/// The producer's settings: idempotent, `acks=all`, the configured compression, a
/// delivery timeout of `produce_timeout`.
fn producer_config(k: &KafkaConfig) -> anyhow::Result<ClientConfig> {
    client_config(
        k,
        &[
            ("enable.idempotence", "true".into()),
            ("acks", "all".into()),
            ("compression.type", k.compression.clone()),
            ("linger.ms", "2".into()),
            (
                "message.timeout.ms",
                k.produce_timeout().as_millis().to_string(),
            ),
        ],
    )
}

/// The host name `{hostname}` stands for in advertised URLs (a StatefulSet pod's name).
pub fn hostname() -> String {
    if let Ok(h) = std::env::var("HOSTNAME")
        && !h.is_empty()
    {
        return h;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// Kafka mode's state: the producer, the tenants' partition counts, what this replica
/// owns, and the ingest requests waiting for their records to be applied.
pub struct Kafka {
    pub config: KafkaConfig,
    /// Replaced after a fatal error (the idempotent producer's are final: a fenced or
    /// out-of-sequence producer never produces again).
    producer: parking_lot::RwLock<FutureProducer>,
    producer_config: ClientConfig,
    /// Partitions of each tenant's topic (fixed: changing a topic's partition count
    /// moves deployments between partitions, which Kafka mode does not support).
    partitions: HashMap<String, i32>,
    pub ownership: Arc<Ownership>,
    waiters: Mutex<Waiters>,
    /// This replica as peers and edges reach it.
    pub advertise_url: String,
    pub advertise_grpc: String,
    /// Where the offsets this replica applied are kept.
    pub state_dir: PathBuf,
    /// Applying records fails (the store refuses them): not ready.
    pub stalled: std::sync::atomic::AtomicBool,
}

/// Results of applied records kept for ingest requests that wait for them (a result may
/// come before its request starts waiting, so the latest ones are kept a while).
#[derive(Default)]
struct Waiters {
    waiting: HashMap<(i32, i64, String), oneshot::Sender<Applied>>,
    recent: HashMap<(i32, i64, String), Applied>,
    order: std::collections::VecDeque<(i32, i64, String)>,
}

const RECENT: usize = 16_384;

impl Kafka {
    /// `topic`/`partition`'s (low, high) watermarks, asked of the brokers through the
    /// producer's client (not the consumer's: its thread must keep polling).
    pub fn watermarks(
        &self,
        topic: &str,
        partition: i32,
        timeout: std::time::Duration,
    ) -> rdkafka::error::KafkaResult<(i64, i64)> {
        self.producer
            .read()
            .client()
            .fetch_watermarks(topic, partition, timeout)
    }

    /// Connects: checks the brokers answer (and the credentials work), creates the
    /// tenants' topics or checks they exist, and learns their partition counts. Every
    /// failure names the setting to fix.
    pub fn connect(
        k: &KafkaConfig,
        data_dir: &std::path::Path,
        listen: std::net::SocketAddr,
        grpc_listen: std::net::SocketAddr,
    ) -> anyhow::Result<Kafka> {
        let pc = producer_config(k)?;
        let producer: FutureProducer = pc.create().map_err(|e| {
            anyhow::anyhow!("invalid configuration: kafka: cannot create a producer: {e}")
        })?;
        let partitions = topics(k, &producer)?;
        let host = hostname();
        let advertise_url = k
            .advertise_url
            .clone()
            .unwrap_or_else(|| format!("http://{listen}"))
            .replace("{hostname}", &host);
        let advertise_grpc = match &k.advertise_grpc {
            Some(g) => g.replace("{hostname}", &host),
            None => {
                let h = advertise_url
                    .trim_start_matches("http://")
                    .rsplit_once(':')
                    .map_or(advertise_url.trim_start_matches("http://"), |(h, _)| h)
                    .to_owned();
                format!("http://{h}:{}", grpc_listen.port())
            }
        };
        let state_dir = data_dir.join("kafka");
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", state_dir.display()))?;
        Ok(Kafka {
            config: k.clone(),
            producer: parking_lot::RwLock::new(producer),
            producer_config: pc,
            partitions,
            ownership: Arc::new(Ownership::default()),
            waiters: Mutex::default(),
            advertise_url,
            advertise_grpc,
            state_dir,
            stalled: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Partitions of `tenant`'s topic, or an error for a tenant this store does not
    /// consume.
    pub fn partitions(&self, tenant: &str) -> crate::core::Result<i32> {
        self.partitions.get(tenant).copied().ok_or_else(|| {
            crate::core::Error::forbidden(
                "tenant_not_served",
                format!(
                    "this gateway's kafka.tenants does not list tenant {tenant:?}; send its logs to the gateway of that tenant"
                ),
            )
        })
    }

    /// The tenants and their topics' partition counts.
    pub fn topics(&self) -> &HashMap<String, i32> {
        &self.partitions
    }

    /// The partition of `id`.
    pub fn partition_of(&self, id: &DeploymentId) -> crate::core::Result<i32> {
        Ok(partition_for(&id.deployment, self.partitions(&id.tenant)?))
    }

    /// Whether this replica serves `id` now (owns its partition and has caught up).
    pub fn serves(&self, id: &DeploymentId) -> bool {
        self.partition_of(id)
            .is_ok_and(|p| self.ownership.state(&id.tenant, p) == Some(PartitionState::Serving))
    }

    /// Produces the lines of one ingest batch and waits for the brokers' ack: the
    /// partition and offset.
    pub async fn produce_lines(
        &self,
        id: &DeploymentId,
        records: &[LogRecord],
        batch: Option<&BatchId>,
    ) -> crate::core::Result<(i32, i64)> {
        let entry = pb::KafkaEntry {
            deployment: id.deployment.clone(),
            op: Some(pb::kafka_entry::Op::Lines(pb::KafkaLines {
                source: batch.map(|b| b.source.clone()).unwrap_or_default(),
                batch_id: batch.map_or(0, |b| b.batch_id),
                lines: records
                    .iter()
                    .map(|r| crate::grpc::record_to_pb(r, 0, String::new()))
                    .collect(),
            })),
        };
        self.produce(id, entry).await
    }

    /// Produces a completion.
    pub async fn produce_completion(
        &self,
        id: &DeploymentId,
        status: Outcome,
        exit_code: i32,
    ) -> crate::core::Result<(i32, i64)> {
        let entry = pb::KafkaEntry {
            deployment: id.deployment.clone(),
            op: Some(pb::kafka_entry::Op::Complete(pb::CompleteRequest {
                deployment: id.deployment.clone(),
                status: status.as_str().to_owned(),
                exit_code: Some(exit_code),
            })),
        };
        self.produce(id, entry).await
    }

    async fn produce(
        &self,
        id: &DeploymentId,
        entry: pb::KafkaEntry,
    ) -> crate::core::Result<(i32, i64)> {
        let partition = self.partition_of(id)?;
        let topic = self.config.topic(&id.tenant);
        let payload = entry.encode_to_vec();
        let record = FutureRecord::to(&topic)
            .partition(partition)
            .key(id.deployment.as_bytes())
            .payload(&payload);
        let producer = self.producer.read().clone();
        match producer.send(record, self.config.produce_timeout()).await {
            Ok(d) => Ok((d.partition, d.offset)),
            Err((e, _)) => {
                tracing::warn!(error = %e, topic, "kafka did not acknowledge a batch");
                use rdkafka::types::RDKafkaErrorCode as C;
                let fenced = matches!(
                    e.rdkafka_error_code(),
                    Some(
                        C::ProducerFenced
                            | C::InvalidProducerEpoch
                            | C::OutOfOrderSequenceNumber
                            | C::UnknownProducerId
                    )
                );
                if let Some((_, why)) = producer.client().fatal_error() {
                    self.renew_producer(&producer, &why);
                } else if fenced {
                    self.renew_producer(&producer, &e.to_string());
                }
                Err(crate::core::Error::unavailable(
                    "kafka_unavailable",
                    format!(
                        "Kafka did not acknowledge the batch ({e}); nothing is acknowledged, retry it (with the same batch id it is stored once)"
                    ),
                    Duration::from_secs(2),
                ))
            }
        }
    }

    /// Replaces `failed` (if it is still the current producer) with a new one.
    fn renew_producer(&self, failed: &FutureProducer, why: &str) {
        let mut current = self.producer.write();
        if !std::ptr::eq(current.client().native_ptr(), failed.client().native_ptr()) {
            return; // Another request renewed it already.
        }
        match self.producer_config.create::<FutureProducer>() {
            Ok(p) => {
                tracing::warn!(
                    why,
                    "kafka: the producer failed for good; a new one takes over"
                );
                *current = p;
            }
            Err(e) => tracing::error!(error = %e, "kafka: cannot renew the producer"),
        }
    }

    /// Waits up to `kafka.apply_wait` for the owner to apply the record at
    /// `partition`/`offset` of `tenant`'s topic; `None` if it did not in time (or this
    /// replica does not own the partition, so it cannot see it applied).
    pub async fn applied(&self, tenant: &str, partition: i32, offset: i64) -> Option<Applied> {
        // Only the owner's consumer applies it here.
        self.ownership.state(tenant, partition)?;
        let key = (partition, offset, tenant.to_owned());
        let rx = {
            let mut w = self.waiters.lock();
            if let Some(a) = w.recent.remove(&key) {
                return Some(a);
            }
            let (tx, rx) = oneshot::channel();
            w.waiting.insert(key.clone(), tx);
            rx
        };
        let got = tokio::time::timeout(self.config.apply_wait(), rx).await;
        self.waiters.lock().waiting.remove(&key);
        got.ok().and_then(Result::ok)
    }

    /// The consumer applied the record at `partition`/`offset` of `tenant`'s topic.
    fn done(&self, tenant: &str, partition: i32, offset: i64, applied: Applied) {
        let key = (partition, offset, tenant.to_owned());
        let mut w = self.waiters.lock();
        if let Some(tx) = w.waiting.remove(&key) {
            let _ = tx.send(applied);
            return;
        }
        w.recent.insert(key.clone(), applied);
        w.order.push_back(key);
        while w.order.len() > RECENT {
            if let Some(old) = w.order.pop_front() {
                w.recent.remove(&old);
            }
        }
    }

    /// Whether the brokers answer (readiness).
    pub fn reachable(&self) -> bool {
        self.producer
            .read()
            .client()
            .fetch_metadata(None, Duration::from_secs(2))
            .is_ok()
    }
}

/// Creates missing topics (`create_topics`) or names the missing one, and returns each
/// tenant's partition count.
fn topics(k: &KafkaConfig, producer: &FutureProducer) -> anyhow::Result<HashMap<String, i32>> {
    let metadata = producer
        .client()
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| {
            anyhow::anyhow!(
                "kafka.brokers {:?}: the brokers did not answer ({e}); check the addresses, the network, and the credentials (kafka.security_protocol, kafka.sasl_*, kafka.ssl_*)",
                k.brokers
            )
        })?;
    let count = |topic: &str| {
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .filter(|n| *n > 0)
    };
    let missing: Vec<String> = k
        .tenants
        .iter()
        .map(|t| k.topic(t))
        .filter(|t| count(t).is_none())
        .collect();
    if !missing.is_empty() {
        if !k.create_topics {
            anyhow::bail!(
                "kafka: topic(s) {} do not exist and kafka.create_topics is false; create them (e.g. with the cluster's topic operator) or set create_topics = true",
                missing.join(", ")
            );
        }
        create_topics(k, &missing)?;
    }
    let metadata = producer
        .client()
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| anyhow::anyhow!("kafka.brokers {:?}: {e}", k.brokers))?;
    let mut out = HashMap::new();
    for tenant in &k.tenants {
        let topic = k.topic(tenant);
        let n = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().len() as i32)
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                anyhow::anyhow!("kafka: topic {topic} has no partitions after creating it")
            })?;
        out.insert(tenant.clone(), n);
    }
    Ok(out)
}

fn create_topics(k: &KafkaConfig, names: &[String]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(k, &[])?
        .create()
        .map_err(|e| anyhow::anyhow!("kafka: cannot create an admin client: {e}"))?;
    let retention = k.topic_retention_ms().to_string();
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| {
            NewTopic::new(
                n,
                k.partitions,
                TopicReplication::Fixed(k.replication_factor),
            )
            .set("retention.ms", &retention)
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures::executor::block_on(admin.create_topics(&new, &opts))
        .map_err(|e| anyhow::anyhow!("kafka: creating topics {}: {e}", names.join(", ")))?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, e)) => anyhow::bail!(
                "kafka: cannot create topic {topic} ({e}); check kafka.partitions, kafka.replication_factor (at most the number of brokers) and the client's ACLs"
            ),
        }
    }
    // The brokers' metadata catches up with a creation shortly after.
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let ok = names.iter().all(|n| {
            admin
                .inner()
                .fetch_metadata(Some(n), Duration::from_secs(2))
                .is_ok_and(|m| {
                    m.topics()
                        .iter()
                        .any(|t| t.name() == n && !t.partitions().is_empty())
                })
        });
        if ok {
            return Ok(());
        }
    }
    anyhow::bail!(
        "kafka: topics {} were created but do not show in the brokers' metadata",
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_is_kafkas() {
        // The Java client's test vectors (org.apache.kafka.common.utils.UtilsTest).
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58_897_971
        );
        assert_eq!(murmur2(b"abc"), 479_470_107);
    }

    #[test]
    fn partitions_are_in_range_and_spread() {
        let mut seen = [0usize; 12];
        for i in 0..1200 {
            let p = partition_for(&format!("build-{i}"), 12);
            assert!((0..12).contains(&p));
            seen[p as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 50), "{seen:?}");
    }
}
