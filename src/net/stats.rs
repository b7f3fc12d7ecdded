//! Gossip traffic counters, per topic: messages and payload bytes this peer published, and
//! those it received (each delivered message once, after gossipsub's deduplication). Shared
//! between the network loop, which counts, and the API, which reports (`meshd peers`).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::wire::Topic;

#[derive(Debug, Default)]
struct Counter {
    msgs: AtomicU64,
    bytes: AtomicU64,
}

impl Counter {
    fn add(&self, bytes: usize) {
        self.msgs.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn get(&self) -> (u64, u64) {
        (
            self.msgs.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// Counters for the three topics.
#[derive(Debug, Default)]
pub struct GossipStats {
    published: [Counter; 3],
    received: [Counter; 3],
}

fn index(t: Topic) -> usize {
    match t {
        Topic::Jobs => 0,
        Topic::Claims => 1,
        Topic::Peers => 2,
    }
}

impl GossipStats {
    pub fn published(&self, t: Topic, bytes: usize) {
        self.published[index(t)].add(bytes);
    }

    pub fn received(&self, t: Topic, bytes: usize) {
        self.received[index(t)].add(bytes);
    }

    /// The counts so far, per topic.
    pub fn snapshot(&self) -> Vec<TopicTraffic> {
        Topic::ALL
            .iter()
            .map(|t| {
                let (published_msgs, published_bytes) = self.published[index(*t)].get();
                let (received_msgs, received_bytes) = self.received[index(*t)].get();
                TopicTraffic {
                    topic: match t {
                        Topic::Jobs => "jobs",
                        Topic::Claims => "claims",
                        Topic::Peers => "peers",
                    }
                    .to_string(),
                    published_msgs,
                    published_bytes,
                    received_msgs,
                    received_bytes,
                }
            })
            .collect()
    }
}

/// Gossip on one topic since the daemon started (payload bytes, gossipsub framing aside).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicTraffic {
    pub topic: String,
    pub published_msgs: u64,
    pub published_bytes: u64,
    pub received_msgs: u64,
    pub received_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_topic() {
        let s = GossipStats::default();
        s.published(Topic::Claims, 100);
        s.published(Topic::Claims, 50);
        s.received(Topic::Peers, 7);
        let snap = s.snapshot();
        assert_eq!(snap[1].topic, "claims");
        assert_eq!((snap[1].published_msgs, snap[1].published_bytes), (2, 150));
        assert_eq!((snap[2].received_msgs, snap[2].received_bytes), (1, 7));
        assert_eq!(
            snap[0],
            TopicTraffic {
                topic: "jobs".into(),
                ..Default::default()
            }
        );
    }
}
