//! Commands a Redis ran during a period: `INFO stats commandstats` before and after, over
//! one plain RESP exchange (no client library: two lines out, one bulk string back).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long one `INFO` may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The counters of one reading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RedisStats {
    /// `calls` of each command (`cmdstat_<name>`): the commands a script runs are counted
    /// under their own names as well as the script call itself.
    pub(crate) calls: BTreeMap<String, u64>,
    /// `total_commands_processed`.
    pub(crate) processed: u64,
}

/// `host:port` of `redis://[user:password@]host:port[/db]` or of a bare `host:port`.
fn host_port(addr: &str) -> &str {
    let rest = addr.strip_prefix("redis://").unwrap_or(addr);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// Reads the counters of the Redis at `addr`.
pub(crate) async fn read(addr: &str) -> anyhow::Result<RedisStats> {
    tokio::time::timeout(TIMEOUT, read_inner(host_port(addr)))
        .await
        .context("INFO timed out")?
}

async fn read_inner(addr: &str) -> anyhow::Result<RedisStats> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to Redis at {addr}"))?;
    tcp.write_all(b"*3\r\n$4\r\nINFO\r\n$5\r\nstats\r\n$12\r\ncommandstats\r\n")
        .await?;
    let mut r = BufReader::new(tcp);
    let mut head = String::new();
    r.read_line(&mut head).await?;
    let Some(len) = head.trim_end().strip_prefix('$') else {
        bail!("Redis answered INFO with {}", head.trim_end());
    };
    let len: usize = len.parse().context("bulk length")?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(parse(&String::from_utf8_lossy(&body)))
}

/// Parses `INFO` text: `total_commands_processed:N` and `cmdstat_NAME:calls=N,…` lines.
pub(crate) fn parse(text: &str) -> RedisStats {
    let mut s = RedisStats::default();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("total_commands_processed:") {
            s.processed = v.trim().parse().unwrap_or(0);
        } else if let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        {
            let calls = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            s.calls.insert(name.to_owned(), calls);
        }
    }
    s
}

/// What ran between two readings, per command and per published event. The generator's
/// own `INFO` calls are left out.
pub(crate) fn delta(before: &RedisStats, after: &RedisStats, events: u64) -> Value {
    let per_event = |n: u64| {
        if events == 0 {
            Value::Null
        } else {
            json!(n as f64 / events as f64)
        }
    };
    let mut by_command = serde_json::Map::new();
    let mut by_command_per_event = serde_json::Map::new();
    let mut commands = 0;
    for (name, &calls) in &after.calls {
        let n = calls.saturating_sub(before.calls.get(name).copied().unwrap_or(0));
        if n == 0 || name == "info" {
            continue;
        }
        commands += n;
        by_command.insert(name.clone(), json!(n));
        by_command_per_event.insert(name.clone(), per_event(n));
    }
    let info = after
        .calls
        .get("info")
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.calls.get("info").copied().unwrap_or(0));
    let processed = after
        .processed
        .saturating_sub(before.processed)
        .saturating_sub(info);
    json!({
        "events": events,
        "commands": commands,
        "commands_per_event": per_event(commands),
        "processed": processed,
        "processed_per_event": per_event(processed),
        "by_command": by_command,
        "by_command_per_event": by_command_per_event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# Stats\r\ntotal_connections_received:3\r\ntotal_commands_processed:10\r\n\
        \r\n# Commandstats\r\ncmdstat_info:calls=2,usec=50,usec_per_call=25.00\r\n\
        cmdstat_evalsha:calls=4,usec=80,usec_per_call=20.00,rejected_calls=0,failed_calls=0\r\n";
    const AFTER: &str = "# Stats\r\ntotal_commands_processed:125\r\n\r\n# Commandstats\r\n\
        cmdstat_info:calls=3,usec=75\r\ncmdstat_evalsha:calls=104,usec=900\r\n\
        cmdstat_xadd:calls=100,usec=500\r\ncmdstat_publish:calls=100,usec=400\r\n";

    #[test]
    fn counts_each_command_per_event_without_the_generators_info() {
        let (b, a) = (parse(BEFORE), parse(AFTER));
        assert_eq!(b.processed, 10);
        assert_eq!(a.calls.get("xadd"), Some(&100));
        let d = delta(&b, &a, 100);
        assert_eq!(d["commands"], 300);
        assert_eq!(d["commands_per_event"], 3.0);
        assert_eq!(d["by_command_per_event"]["evalsha"], 1.0);
        assert!(d["by_command"].get("info").is_none());
        assert_eq!(d["processed"], 114);
        assert_eq!(delta(&b, &a, 0)["commands_per_event"], Value::Null);
    }

    #[test]
    fn finds_host_and_port_in_a_url() {
        assert_eq!(host_port("redis://127.0.0.1:6390/0"), "127.0.0.1:6390");
        assert_eq!(host_port("redis://u:p@h:1"), "h:1");
        assert_eq!(host_port("127.0.0.1:6379"), "127.0.0.1:6379");
    }
}
