//! Patroni discovery beside the pipeline: `GET /cluster` on any of a cluster's REST endpoints
//! lists its members with host, port, role and state. Parsing is pure; fetching is bounded.

use std::time::Duration;

use serde::Deserialize;

use super::view::{Node, PatroniMember, Role};

#[derive(Debug, thiserror::Error)]
pub enum PatroniError {
    #[error("GET {url}: {message}")]
    Http { url: String, message: String },
    #[error("GET {url}: unexpected body: {message}")]
    Body { url: String, message: String },
    #[error("no Patroni endpoint answered: {0}")]
    NoneAnswered(String),
}

#[derive(Deserialize)]
struct ClusterDoc {
    members: Vec<MemberDoc>,
}

#[derive(Deserialize)]
struct MemberDoc {
    name: String,
    role: String,
    #[serde(default)]
    state: String,
    host: Option<String>,
    port: Option<u16>,
}

/// The servers a `/cluster` document describes, leader first. Members without a PostgreSQL
/// address (not started yet) are left out.
pub fn parse_cluster(body: &str) -> Result<Vec<Node>, String> {
    let doc: ClusterDoc = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let mut nodes: Vec<Node> = doc
        .members
        .into_iter()
        .filter_map(|m| {
            let addr = format!("{}:{}", m.host?, m.port?);
            let member = PatroniMember {
                name: m.name,
                role: m.role,
                state: m.state,
            };
            let role = if member.is_primary() || member.role == "standby_leader" {
                Role::Leader
            } else {
                Role::Replica
            };
            let mut n = Node::new(addr, role);
            n.patroni = Some(member);
            Some(n)
        })
        .collect();
    nodes.sort_by_key(|n| n.role != Role::Leader);
    Ok(nodes)
}

/// Asks the endpoints in turn; the first that answers with a member list wins.
pub async fn discover(
    client: &reqwest::Client,
    endpoints: &[String],
    timeout: Duration,
) -> Result<Vec<Node>, PatroniError> {
    let mut errors = Vec::new();
    for ep in endpoints {
        let url = format!("http://{ep}/cluster");
        match fetch(client, &url, timeout).await {
            Ok(nodes) => return Ok(nodes),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(PatroniError::NoneAnswered(errors.join("; ")))
}

async fn fetch(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<Vec<Node>, PatroniError> {
    let http = |e: reqwest::Error| PatroniError::Http {
        url: url.to_string(),
        message: e.to_string(),
    };
    let resp = client
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .map_err(http)?;
    if !resp.status().is_success() {
        return Err(PatroniError::Http {
            url: url.to_string(),
            message: format!("status {}", resp.status()),
        });
    }
    let body = resp.text().await.map_err(http)?;
    parse_cluster(&body).map_err(|message| PatroniError::Body {
        url: url.to_string(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STANDBY: &str = r#"{"members": [
        {"name": "ci-2", "role": "replica", "state": "streaming", "api_url": "http://127.0.0.1:28019/patroni", "host": "127.0.0.1", "port": 25443, "timeline": 1, "lag": 0},
        {"name": "ci-1", "role": "standby_leader", "state": "running", "api_url": "http://127.0.0.1:28018/patroni", "host": "127.0.0.1", "port": 25442, "timeline": 1},
        {"name": "ci-3", "role": "replica", "state": "stopped", "api_url": "http://127.0.0.1:28020/patroni"}
    ], "scope": "ci"}"#;

    #[test]
    fn reads_members_leader_first() {
        let nodes = parse_cluster(STANDBY).unwrap();
        assert_eq!(nodes.len(), 2, "a member without host/port is skipped");
        assert_eq!(nodes[0].addr, "127.0.0.1:25442");
        assert_eq!(nodes[0].role, Role::Leader);
        assert_eq!(nodes[1].role, Role::Replica);
        assert!(nodes[1].patroni.as_ref().unwrap().is_running());
    }

    #[test]
    fn every_spelling_of_primary_is_a_leader() {
        for role in ["leader", "master", "primary"] {
            let body = format!(
                r#"{{"members": [{{"name": "a", "role": "{role}", "state": "running", "host": "h", "port": 1}}]}}"#
            );
            let nodes = parse_cluster(&body).unwrap();
            assert_eq!(nodes[0].role, Role::Leader);
            assert!(nodes[0].patroni.as_ref().unwrap().is_primary());
        }
    }

    #[test]
    fn a_stopping_leader_is_not_writable() {
        let body = r#"{"members": [{"name": "a", "role": "leader", "state": "stopping", "host": "h", "port": 1}]}"#;
        let nodes = parse_cluster(body).unwrap();
        assert!(!nodes[0].writable());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_cluster("<html>").is_err());
        assert!(parse_cluster(r#"{"members": 3}"#).is_err());
    }
}
