//! The pusher: the agent of the benchmark. It sends one line per request at a fixed rate
//! and stamps each line with its send time, so a viewer's `now - sent` is the whole path
//! agent -> viewer (ingest, durable append, broadcast, edge, socket).
//!
//! Requests go out on a pool of keep-alive connections: an ack waits for the store's
//! fsync, so one connection alone could not hold 1,000 lines/s. A line is sent when its
//! turn comes (`start + seq / rate`) or, if every connection is busy then, as soon as one
//! frees; how late that was is reported (`push_lag`), and the line's stamp is the moment
//! it really left, so a late pusher never shows up as server latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use tokio::sync::{Mutex, mpsc};

use crate::http::{self, Client, Endpoint};
use crate::viewer::unix_nanos;

/// Where and how lines are published.
#[derive(Debug, Clone)]
pub struct Target {
    /// The publish URL: `{store}/v1/deployments/{id}/logs` or nchan's `{nginx}/pub/{id}`.
    pub endpoint: Endpoint,
    /// logstream lines are NDJSON records; nchan publishes the body as the message.
    pub ndjson: bool,
    /// Sent as `Authorization: Bearer` when set.
    pub token: Option<String>,
}

impl Target {
    /// The request that publishes `message`.
    fn request(&self, message: &str) -> Vec<u8> {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        if self.ndjson {
            headers.push(("Content-Type", "application/x-ndjson"));
            let body = format!("{{\"message\":\"{message}\"}}\n");
            http::request_bytes("POST", &self.endpoint, &headers, body.as_bytes())
        } else {
            headers.push(("Content-Type", "text/plain"));
            http::request_bytes("POST", &self.endpoint, &headers, message.as_bytes())
        }
    }

    /// Publishes one line that is not measured (`warmup`): for logstream it creates the
    /// deployment (a deployment with no line is 404 on `/stream`), for both systems it is
    /// the first event every viewer waits for before it counts as connected.
    pub async fn warm_up(&self) -> anyhow::Result<()> {
        let (status, body) = Client::new(&self.endpoint.authority)
            .exchange(&self.request("warmup"))
            .await?;
        if !(200..300).contains(&status) {
            bail!(
                "warm-up POST {}: HTTP {status}: {}",
                self.endpoint.path,
                String::from_utf8_lossy(&body)
            );
        }
        Ok(())
    }
}

/// What the pusher did.
#[derive(Debug, Default)]
pub struct Pushed {
    /// `accepted[seq]`: the publisher answered 2xx for line `seq`.
    pub accepted: Vec<bool>,
    /// Requests that failed (error status or broken connection), with the first reason.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Per line: send time minus its scheduled time, in microseconds.
    pub lag_us: Vec<u32>,
    /// From the first scheduled send to the last answer.
    pub elapsed: Duration,
}

/// Sends `lines` lines at `rate` per second over `connections` keep-alive connections.
pub async fn push(
    target: &Target,
    rate: u32,
    lines: u64,
    connections: usize,
) -> anyhow::Result<Pushed> {
    ensure!(rate > 0, "--rate must be positive");
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    // A little slack so the first sends are not already late.
    let start = Instant::now() + Duration::from_millis(20);
    let (tx, rx) = mpsc::channel::<u64>(lines.max(1) as usize);
    // One queue, several workers: whichever connection is free takes the next line.
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::new();
    for _ in 0..connections.max(1) {
        let rx = rx.clone();
        let target = target.clone();
        workers.push(tokio::spawn(async move {
            let mut client = Client::new(&target.endpoint.authority);
            let mut done = Vec::new();
            loop {
                let Some(seq) = rx.lock().await.recv().await else {
                    break;
                };
                let scheduled = start + period.mul_f64(seq as f64);
                let lag = Instant::now().saturating_duration_since(scheduled);
                let request = target.request(&format!("{seq} {}", unix_nanos()));
                let result = match client.exchange(&request).await {
                    Ok((status, _)) if (200..300).contains(&status) => Ok(()),
                    Ok((status, body)) => Err(format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    )),
                    Err(e) => Err(format!("{e:#}")),
                };
                done.push((seq, lag, result));
            }
            done
        }));
    }
    for seq in 0..lines {
        tokio::time::sleep_until((start + period.mul_f64(seq as f64)).into()).await;
        if tx.send(seq).await.is_err() {
            break;
        }
    }
    drop(tx);

    let mut pushed = Pushed {
        accepted: vec![false; lines as usize],
        lag_us: Vec::with_capacity(lines as usize),
        ..Pushed::default()
    };
    for w in workers {
        for (seq, lag, result) in w.await? {
            pushed
                .lag_us
                .push(lag.as_micros().min(u32::MAX as u128) as u32);
            match result {
                Ok(()) => pushed.accepted[seq as usize] = true,
                Err(e) => {
                    pushed.errors += 1;
                    pushed.first_error.get_or_insert(e);
                }
            }
        }
    }
    pushed.elapsed = start.elapsed();
    Ok(pushed)
}
