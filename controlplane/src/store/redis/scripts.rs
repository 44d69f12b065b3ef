//! The Lua scripts behind every Redis write: each checks the epoch, then moves the
//! mapping, the revision counter and the change entry together.

use std::sync::LazyLock;

use redis::Script;

// The scripts first check that the store still holds the epoch this control plane follows
// (a FLUSHALL, a restart without persistence or a failover to an empty replica removes
// it; a peer that noticed first replaces it), so no write lands on a history nobody
// follows. Then they compute the next revision and XADD: XADD refuses an id at or below
// the stream's newest, and a script's earlier writes would stay if a later command
// failed. KEYS: map, keys, rev, changes, epoch.

/// The refusal of a script that found another epoch (or none): an error with code
/// [`EPOCH_REFUSED`] and the detail `found=<epoch>` (empty when missing).
pub(super) const CHECK_EPOCH: &str = "
local found = redis.call('GET', KEYS[5])
if found ~= ARGV[1] then
    return redis.error_reply('SWITCHYARD_EPOCH found=' .. (found or ''))
end
";

/// The error code of a write refused by [`CHECK_EPOCH`]; the message holds the epoch found.
pub(super) const EPOCH_REFUSED: &str = "SWITCHYARD_EPOCH";

/// ARGV: epoch, key, destination, history. Returns the new revision.
pub(super) static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{CHECK_EPOCH}
local rev = (tonumber(redis.call('GET', KEYS[3])) or 0) + 1
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], string.format('%d-1', rev),
    'key', ARGV[2], 'destination', ARGV[3])
redis.call('SET', KEYS[3], string.format('%d', rev))
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
return rev
"
    ))
});

/// ARGV: epoch, key, history. Returns the new revision, or nil when the key was not mapped.
pub(super) static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{CHECK_EPOCH}
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then return false end
local rev = (tonumber(redis.call('GET', KEYS[3])) or 0) + 1
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], string.format('%d-1', rev), 'key', ARGV[2])
redis.call('SET', KEYS[3], string.format('%d', rev))
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
return rev
"
    ))
});

/// KEYS as above (map and keys unused). ARGV: epoch, bulk key, history. Records one bulk
/// change (no destination).
pub(super) static BULK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{CHECK_EPOCH}
local rev = (tonumber(redis.call('GET', KEYS[3])) or 0) + 1
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], string.format('%d-1', rev), 'key', ARGV[2])
redis.call('SET', KEYS[3], string.format('%d', rev))
return rev
"
    ))
});

/// KEYS: epoch. ARGV: old, fresh. Sets `fresh` while the epoch is `old` or missing;
/// returns the epoch the store holds afterwards.
pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local found = redis.call('GET', KEYS[1])
if (not found) or found == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2])
    return ARGV[2]
end
return found
",
    )
});

/// The epoch a refusal of [`CHECK_EPOCH`] reports (`None`: the key is missing), from the
/// error's detail (`found=<epoch>`; Redis may append where the script ran).
pub(super) fn found_epoch(detail: &str) -> Option<String> {
    let found = detail.split_whitespace().next()?.strip_prefix("found=")?;
    (!found.is_empty()).then(|| found.to_string())
}
