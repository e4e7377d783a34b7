//! `redact` and `delete`: audited hotfixes of a stored log (scope `logs:admin`).

use clap::Args;
use logstream_model::wire;

use crate::{ApiError, Client, usage};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["seq", "pattern"])))]
pub struct RedactArgs {
    /// Deployment id.
    deployment: String,
    /// Lines A-B (or A): their whole messages are masked, or with --match the matches
    /// in them.
    #[arg(long, value_name = "A-B")]
    seq: Option<String>,
    /// A regex whose matches are masked (in --seq's lines, else in every line). Never
    /// stored or logged: it may be the secret itself.
    #[arg(long = "match", value_name = "REGEX")]
    pattern: Option<String>,
    /// Why (required): recorded with the rewrite and in the audit log.
    #[arg(long)]
    reason: String,
}

#[derive(Args)]
pub struct DeleteArgs {
    /// Deployment id.
    deployment: String,
    /// Why (required): recorded in the audit log.
    #[arg(long)]
    reason: String,
    /// Do not ask for confirmation (the deletion cannot be undone).
    #[arg(long)]
    yes: bool,
}

fn check_id(id: &str) -> anyhow::Result<()> {
    logstream_model::validate_deployment_id(id)
        .map_err(|e| usage(format!("DEPLOYMENT {id:?}: {e}")))
}

pub async fn redact(c: &Client, a: RedactArgs) -> anyhow::Result<i32> {
    check_id(&a.deployment)?;
    if let Some(p) = &a.pattern {
        regex::Regex::new(p).map_err(|e| usage(format!("--match: not a valid regex: {e}")))?;
    }
    if a.reason.trim().is_empty() {
        return Err(usage("--reason: say why (it is recorded with the rewrite)"));
    }
    let r = c
        .request(
            reqwest::Method::POST,
            &format!("/v1/deployments/{}/redactions", a.deployment),
        )?
        .json(&wire::RedactionRequest {
            seqs: a.seq,
            pattern: a.pattern,
            reason: a.reason,
        })
        .send()
        .await?;
    if !r.status().is_success() {
        return Err(ApiError::read(r).await.into());
    }
    let done: wire::RedactionReply = r.json().await?;
    let seqs: Vec<String> = done
        .seqs
        .iter()
        .map(|[a, z]| {
            if a == z {
                a.to_string()
            } else {
                format!("{a}-{z}")
            }
        })
        .collect();
    if done.lines == 0 {
        eprintln!("nothing matched in {}: no line was changed", a.deployment);
    } else {
        eprintln!(
            "masked {} matches in {} lines of {} (seqs {}); {} blocks rewritten, ledger {}",
            done.matches,
            done.lines,
            a.deployment,
            seqs.join(","),
            done.blocks,
            done.ledger_head
        );
    }
    Ok(0)
}

pub async fn delete(c: &Client, a: DeleteArgs) -> anyhow::Result<i32> {
    check_id(&a.deployment)?;
    if a.reason.trim().is_empty() {
        return Err(usage("--reason: say why (it is recorded in the audit log)"));
    }
    if !a.yes {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return Err(usage(
                "deleting cannot be undone: pass --yes (standard input is not a terminal to ask)",
            ));
        }
        eprint!(
            "delete deployment {} and every line of it? type its id to confirm: ",
            a.deployment
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != a.deployment {
            eprintln!("not deleted");
            return Ok(1);
        }
    }
    let r = c
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/deployments/{}", a.deployment),
        )?
        .query(&[("reason", a.reason.as_str())])
        .send()
        .await?;
    if !r.status().is_success() {
        return Err(ApiError::read(r).await.into());
    }
    eprintln!("deleted deployment {}", a.deployment);
    Ok(0)
}
