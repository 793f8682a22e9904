//! The sharded notification channels of a Redis Cluster store (R10 `wait` mode).
//!
//! A classic `PUBLISH` in a cluster is broadcast to every node over the cluster bus,
//! so notification traffic would grow with nodes × instances. Sharded pub/sub
//! (`SPUBLISH`/`SSUBSCRIBE`, Redis 7.0) delivers a message only within the shard that
//! owns the channel's slot. A cluster store therefore publishes each notification on one
//! of [`COUNT`] sharded channels, `<prefix>:done:{<tag>}`, whose hash tags are chosen so
//! that channel `i` lies in the `i`-th of [`COUNT`] equal ranges of the 16 384 slots,
//! and every instance subscribes to all of them. A record's notification goes on the
//! channel of its own slot's range, so it usually stays on the node that holds the
//! record.

/// How many sharded channels a cluster store uses: enough to spread them over the
/// masters of any cluster up to this size.
pub(crate) const COUNT: usize = 64;

/// The slots of a Redis Cluster.
const SLOTS: u32 = 16_384;

/// The cluster slot of a key, as Redis computes it: CRC16 (XMODEM) of the hash tag
/// (the part between the first `{` and the next `}`, when not empty), else of the whole
/// key, modulo 16 384. (redis-rs computes it too, in `cluster_routing::Slot`, but does
/// not expose the number.)
pub(crate) fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    let crc = crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key));
    // In range: the remainder of a division by 16 384.
    (u32::from(crc) % SLOTS) as u16
}

/// Which of the [`COUNT`] ranges of slots `slot` falls in.
fn range_of(slot: u16) -> usize {
    // In range: slot < 16 384, so the quotient is below COUNT.
    (u32::from(slot) * COUNT as u32 / SLOTS) as usize
}

/// The channel names of one store's prefix.
#[derive(Clone, Debug)]
pub(crate) struct Shards {
    channels: Vec<String>,
}

impl Shards {
    /// The channels of `prefix`: for each range of slots, `<prefix>:done:{<n>}` with the
    /// smallest number `n` whose slot is in that range. Every instance computes the same
    /// names.
    pub(crate) fn new(prefix: &str) -> Self {
        let mut tags: Vec<Option<u32>> = vec![None; COUNT];
        let mut left = COUNT;
        let mut n = 0u32;
        while left > 0 {
            let range = range_of(slot(n.to_string().as_bytes()));
            if tags[range].is_none() {
                tags[range] = Some(n);
                left -= 1;
            }
            n += 1;
        }
        let channels = tags
            .into_iter()
            .flatten()
            .map(|n| format!("{prefix}:done:{{{n}}}"))
            .collect();
        Self { channels }
    }

    /// Every channel, to subscribe to.
    pub(crate) fn all(&self) -> &[String] {
        &self.channels
    }

    /// The channel a notification about the record whose Redis key is `key` goes on:
    /// the one in the range of the record's own slot.
    pub(crate) fn for_key(&self, key: &str) -> &str {
        &self.channels[range_of(slot(key.as_bytes()))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known slots, from Redis's own `CLUSTER KEYSLOT`.
    #[test]
    fn slots_are_redis_slots() {
        assert_eq!(slot(b"foo"), 12_182);
        assert_eq!(slot(b"123456789"), 12_739);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    // Each channel lies in its own range of slots, so the channels spread over every
    // master of a cluster, and a record's channel is in its own slot's range.
    #[test]
    fn channels_cover_every_range_once() {
        let shards = Shards::new("idem");
        assert_eq!(shards.all().len(), COUNT);
        for (i, channel) in shards.all().iter().enumerate() {
            assert!(channel.starts_with("idem:done:{"), "{channel}");
            assert_eq!(range_of(slot(channel.as_bytes())), i);
        }
        let key = "idem:{00ff:6b6579}";
        assert_eq!(
            range_of(slot(shards.for_key(key).as_bytes())),
            range_of(slot(key.as_bytes()))
        );
    }
}
