//! Kafka mode's routing: which store replica owns which partition, as the replicas
//! publish it (`GET /v1/cluster` on each of `store_replicas`, asked every second and
//! whenever a replica answers `not_owner`/`moved`). Edges route a deployment's live
//! upstream and catch-up reads to its owner; replicas forward requests for deployments
//! they do not own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::kafka::partition_for;

/// One replica's answer at `/v1/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterState {
    /// The replica's HTTP base URL (`kafka.advertise_url`).
    pub replica: String,
    /// Its gRPC URL (`kafka.advertise_grpc`).
    pub grpc: String,
    pub tenants: Vec<TenantPartitions>,
}

/// A tenant's topic as one replica sees it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantPartitions {
    pub tenant: String,
    pub topic: String,
    /// Partitions of the topic.
    pub partitions: i32,
    /// Owned and caught up: served here.
    pub serving: Vec<i32>,
    /// Owned, still being rebuilt from the topic.
    pub catching_up: Vec<i32>,
}

/// Where a deployment is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub http: String,
    pub grpc: String,
}

/// What the routing knows about a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Served(Owner),
    /// Its partition's new owner is still rebuilding it.
    CatchingUp,
    /// No replica claims its partition (a rebalance in progress, or replicas down).
    Unknown,
}

#[derive(Default)]
struct Table {
    partitions: HashMap<String, i32>,
    serving: HashMap<(String, i32), Owner>,
    catching_up: HashMap<(String, i32), Owner>,
}

/// The replicas and what they own, refreshed in the background.
pub struct Replicas {
    urls: Vec<String>,
    client: reqwest::Client,
    table: RwLock<Table>,
    poke: Notify,
    /// Relays requests to a replica.
    pub proxy: crate::edge::proxy::Proxy,
}

impl Replicas {
    pub fn new(urls: &[String]) -> anyhow::Result<Replicas> {
        let first = urls
            .first()
            .ok_or_else(|| anyhow::anyhow!("invalid configuration: store_replicas is empty"))?;
        Ok(Replicas {
            proxy: crate::edge::proxy::Proxy::new(first)?,
            urls: urls
                .iter()
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("an HTTP client"),
            table: RwLock::default(),
            poke: Notify::new(),
        })
    }

    /// Refreshes every second, and at once when poked; ends with `stop`.
    pub fn spawn(self: &Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.refresh().await;
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = me.poke.notified() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        });
    }

    /// Asks for a refresh now (an owner answered that it is not one any more).
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// Asks every replica what it owns and rebuilds the table.
    pub async fn refresh(&self) {
        let answers = futures::future::join_all(self.urls.iter().map(|u| async move {
            let r = self
                .client
                .get(format!("{u}/v1/cluster"))
                .send()
                .await
                .ok()?;
            if !r.status().is_success() {
                return None;
            }
            r.json::<ClusterState>().await.ok()
        }))
        .await;
        let mut t = Table::default();
        for a in answers.into_iter().flatten() {
            let owner = Owner {
                http: a.replica.clone(),
                grpc: a.grpc.clone(),
            };
            for tp in a.tenants {
                t.partitions.insert(tp.tenant.clone(), tp.partitions);
                for p in tp.serving {
                    t.serving.insert((tp.tenant.clone(), p), owner.clone());
                }
                for p in tp.catching_up {
                    t.catching_up.insert((tp.tenant.clone(), p), owner.clone());
                }
            }
        }
        *self.table.write() = t;
    }

    /// Where `tenant`'s `deployment` is served.
    pub fn lookup(&self, tenant: &str, deployment: &str) -> Lookup {
        let t = self.table.read();
        let Some(n) = t.partitions.get(tenant) else {
            return Lookup::Unknown;
        };
        let key = (tenant.to_owned(), partition_for(deployment, *n));
        if let Some(o) = t.serving.get(&key) {
            return Lookup::Served(o.clone());
        }
        if t.catching_up.contains_key(&key) {
            return Lookup::CatchingUp;
        }
        Lookup::Unknown
    }

    /// GETs `path_and_query` from every replica but `me`, with `authorization` and the
    /// `forwarded` header (so they answer for themselves): the bodies, or which replica
    /// did not answer.
    pub async fn gather(
        &self,
        me: &str,
        path_and_query: &str,
        authorization: &str,
        forwarded: &str,
    ) -> Result<Vec<bytes::Bytes>, String> {
        let calls = self
            .urls
            .iter()
            .filter(|u| u.as_str() != me)
            .map(|u| async move {
                let r = self
                    .client
                    .get(format!("{u}{path_and_query}"))
                    .header("authorization", authorization)
                    .header(forwarded, "1")
                    .send()
                    .await
                    .map_err(|e| format!("store replica {u} did not answer ({e})"))?;
                if !r.status().is_success() {
                    return Err(format!("store replica {u} answered {}", r.status()));
                }
                r.bytes()
                    .await
                    .map_err(|e| format!("store replica {u} did not answer ({e})"))
            });
        futures::future::join_all(calls).await.into_iter().collect()
    }

    /// Follows every other replica's change feed (`/v1/deployments/events`, with
    /// `authorization` and the `forwarded` header so each sends only its own): their
    /// events, whole, until the receiver is dropped. A feed that breaks is followed
    /// again after a second, and `event: resync` is sent in between (changes may have
    /// been missed: list again).
    pub fn follow_changes(
        &self,
        me: &str,
        authorization: String,
        forwarded: &'static str,
    ) -> tokio::sync::mpsc::Receiver<bytes::Bytes> {
        const RESYNC: &[u8] = b"event: resync\ndata: {\"message\":\"a store replica's changes were interrupted; list the deployments again\"}\n\n";
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        for u in self.urls.iter().filter(|u| u.as_str() != me) {
            let (tx, url, auth) = (
                tx.clone(),
                format!("{u}/v1/deployments/events"),
                authorization.clone(),
            );
            // Without a timeout: a feed is long-lived.
            let client = reqwest::Client::new();
            tokio::spawn(async move {
                let mut first = true;
                loop {
                    if !first && tx.send(bytes::Bytes::from_static(RESYNC)).await.is_err() {
                        return;
                    }
                    first = false;
                    let resp = client
                        .get(&url)
                        .header("authorization", &auth)
                        .header("accept", "text/event-stream")
                        .header(forwarded, "1")
                        .send()
                        .await;
                    if let Ok(r) = resp
                        && r.status().is_success()
                    {
                        let mut body = r.bytes_stream();
                        let mut carry: Vec<u8> = Vec::new();
                        while let Some(Ok(chunk)) = futures::StreamExt::next(&mut body).await {
                            carry.extend_from_slice(&chunk);
                            while let Some(end) = carry.windows(2).position(|w| w == b"\n\n") {
                                let block: Vec<u8> = carry.drain(..end + 2).collect();
                                // Its changes and resyncs; not its heartbeats, `retry`, or
                                // its own end (`auth_expired` reaches the client from here).
                                let change = [
                                    b"event: created".as_slice(),
                                    b"event: updated",
                                    b"event: completed",
                                    b"event: deleted",
                                    b"event: resync",
                                ]
                                .iter()
                                .any(|e| block.starts_with(e));
                                if change && tx.send(bytes::Bytes::from(block)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        rx
    }

    /// Every replica's base URL.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }
}
