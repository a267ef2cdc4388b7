//! The Redis key layout: which key and field hold what, and which bucket (so which cluster
//! slot) each lives in.
//!
//! A client's keys share the `{bucket}` hash tag of its bucket, so they live in one slot:
//! - `PREFIX:{bucket}:r:XX`  hash of the current sessions of the bucket's clients whose hash
//!   starts with XX: field `NS:HASH`, a packed record (`record.rs`). A field cannot expire, so
//!   readers treat a record past client retention as gone and the sweeper removes it
//!   (lib.lua's `record_expires_at`);
//! - `PREFIX:{bucket}:a:NS:HASH`  hash of the client's earlier sessions still retained (id ->
//!   packed record);
//! - `PREFIX:{I}:i:J`  hash of the pointers from session ids to their clients, I and J the
//!   id's first two bytes (`pointer.lua`). Reserving a pointer is what makes ids unique among
//!   retained sessions; it lives in the id's slot, so it is written in a step of its own,
//!   before the script that starts the session.
//!
//! Health data is kept per bucket, so the same atomic script that decides a client's session
//! writes it, and a cluster spreads it with the clients:
//! - `PREFIX:{bucket}:wake`  the bucket's records hashes (by XX) by when the sweeper should
//!   look at them next (lib.lua's `schedule`): set when a session starts, moved by the
//!   sweeper;
//! - `PREFIX:{bucket}:ev`  stream of the bucket's lifecycle events, trimmed with `MAXLEN ~`;
//! - `PREFIX:{bucket}:s:DAY`  hash of stats counters of sessions started that day
//!   (`domain::stats`), expiring `stats_retention` after the day.
//!
//! `PREFIX:{bucket}:guard` is never written. Every script that writes more than one key
//! declares it, so that such a script never runs while its slot is being migrated: Redis
//! Cluster refuses a multi-key call that names a key the node does not hold while the slot
//! migrates (TRYAGAIN, or ASK and then TRYAGAIN on the target), and the router waits the
//! migration out. Without it a script could write on the source a key already moved (and fail
//! halfway), or create on the target a key still on the source (and the migration of that key
//! would then fail). A script that writes only its one declared key (the hot tick, the
//! pointers) needs no guard.

use crate::domain::{ClientHash, Namespace, SessionId};

/// Clients are spread over this many buckets by their hash. A bucket is the hash tag of
/// its clients' keys, so it lives in one cluster slot, and per-bucket health data (wake
/// index, events, stats) is updated atomically by the decision scripts. 256 lets a cluster
/// spread over up to 256 primaries while a sweep or an aggregate over every bucket stays
/// 256 calls sent at once. Changing it renames every key.
pub(super) const BUCKETS: u32 = 256;

/// The hash tag of a client's keys, e.g. `{2a}`: which cluster slot holds them.
pub fn client_hash_tag(client: &ClientHash) -> String {
    format!("{{{:02x}}}", bucket_of(client.as_str()))
}

pub(super) fn bucket_of(client_hash: &str) -> u32 {
    client_hash
        .get(..4)
        .and_then(|prefix| u32::from_str_radix(prefix, 16).ok())
        .unwrap_or(0)
        % BUCKETS
}

/// The start of every key of a bucket: `PREFIX:{bucket}:`.
pub(super) fn bucket_prefix(prefix: &str, bucket: u32) -> String {
    format!("{prefix}:{{{bucket:02x}}}:")
}

/// Where a client's current session is: its records hash (`PREFIX:{bucket}:r:XX`, XX the
/// first byte of the client's hash) and its field there (`NS:HASH`, as lib.lua's
/// `records_key` reads it).
pub(super) fn record_location(
    prefix: &str,
    namespace: &Namespace,
    client: &ClientHash,
) -> (String, String) {
    // Joined, not formatted: every call builds these two, a batch a hundred times. With 256
    // buckets, the bucket of a hash is its second byte: hex digits 3 and 4.
    const _: () = assert!(BUCKETS == 256);
    let hash = client.as_str();
    (
        [prefix, ":{", &hash[2..4], "}:r:", &hash[..2]].concat(),
        client_field(namespace, client),
    )
}

/// A client's keys as transition.lua takes them, all tagged with the client's bucket: its records
/// hash, its archive (`PREFIX:{bucket}:a:NS:HASH`) and the bucket's migration guard.
pub(super) fn client_keys(prefix: &str, namespace: &Namespace, client: &ClientHash) -> [String; 3] {
    let (records, member) = record_location(prefix, namespace, client);
    let bucket = bucket_of(client.as_str());
    let archive = format!("{}a:{member}", bucket_prefix(prefix, bucket));
    [records, archive, guard_key(prefix, bucket)]
}

/// The bucket's migration guard (see the module's comment): named by every script that
/// writes more than one key, never written.
pub(super) fn guard_key(prefix: &str, bucket: u32) -> String {
    format!("{}guard", bucket_prefix(prefix, bucket))
}

/// A client's field in its records hash, and what a session id's pointer names: `NS:HASH`.
pub(super) fn client_field(namespace: &Namespace, client: &ClientHash) -> String {
    [namespace.as_str(), ":", client.as_str()].concat()
}

/// Where a session id's pointer is: its hash (`PREFIX:{I}:i:J`, tagged with the id's first
/// byte, so pointers spread over the buckets' slots) and its field there (the rest of the id).
pub(super) fn pointer_location<'a>(prefix: &str, id: &'a SessionId) -> (String, &'a str) {
    let id = id.as_str();
    (
        format!("{prefix}:{{{}}}:i:{}", &id[..2], &id[2..4]),
        &id[4..],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash tag of a key, as Redis Cluster reads it.
    fn tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = open + key[open..].find('}').unwrap();
        &key[open + 1..close]
    }

    #[test]
    fn a_clients_keys_share_the_tag_of_its_bucket() {
        let client = ClientHash::parse_stored("3f2a0000000000000000000000000000").unwrap();
        let web = Namespace::parse("web").unwrap();
        let [records, archive, guard] = client_keys("sd", &web, &client);
        assert_eq!(records, "sd:{2a}:r:3f");
        assert_eq!(archive, "sd:{2a}:a:web:3f2a0000000000000000000000000000");
        assert_eq!(tag(&records), tag(&archive));
        assert_eq!(guard, "sd:{2a}:guard");
        assert_eq!(client_hash_tag(&client), "{2a}");
        assert_eq!(
            record_location("sd", &web, &client).1,
            "web:3f2a0000000000000000000000000000"
        );
    }

    #[test]
    fn buckets_cover_the_whole_range() {
        assert_eq!(bucket_of("0000"), 0);
        assert_eq!(bucket_of("00ff"), 255);
        assert_eq!(bucket_of("0100"), 0);
        assert_eq!(bucket_of("ffff"), 255);
    }
}
