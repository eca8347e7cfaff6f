//! The Lua scripts that make an ack, a claim, a renewal and a release one
//! atomic step in Redis. (A publish is a plain XADD and INCRBY: a script
//! costs Redis about three times an XADD.)
//!
//! Keys: `KEYS[1]` is the queue's stream, `KEYS[2]` the counter of the body
//! bytes it holds. Entries carry the fields `t` (content type), `h`
//! (headers, JSON) and `b` (body), in that order.

/// Ack: XACK, and only if that settled a pending entry, XDEL it and give
/// its bytes back, so an acked message leaves Redis's memory.
/// ARGV: group, entry id. Returns 1, or 0 when the entry was not pending.
pub(crate) const ACK: &str = r#"
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if e[1] then
  local f = e[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'b' then redis.call('DECRBY', KEYS[2], #f[i + 1]) end
  end
end
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"#;

/// Claim: XAUTOCLAIM entries idle for `min_idle` ms (leases that ran out
/// or were released, and those of nodes that stopped renewing), with the
/// delivery count Redis keeps for each. ARGV: group, consumer, min_idle,
/// cursor, count. Returns `{next cursor, {{id, fields, count}, ...}}`.
pub(crate) const CLAIM: &str = r#"
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out = {}
for _, e in ipairs(r[2]) do
  if e and e[2] then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    local count = 1
    if p[1] then count = p[1][4] end
    out[#out + 1] = {e[1], e[2], count}
  end
end
return {r[1], out}
"#;

/// Renew: sets the idle time of the entries this consumer still owns
/// (another node may have claimed one meanwhile: that one is left alone):
/// 0 for a lease with more than `orphan_after` left, so no other node
/// claims it; `orphan_after` minus what is left for the others, so one
/// would claim it when its lease ends, should this node die.
/// ARGV: group, consumer, then pairs of id and idle ms. Returns how many
/// were renewed.
pub(crate) const RENEW: &str = r#"
local n = 0
for i = 3, #ARGV - 1, 2 do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[i + 1], 'JUSTID')
    n = n + 1
  end
end
return n
"#;

/// Release: makes an entry this consumer owns claimable at once. With
/// `uncount` = 1 the delivery is not counted (the consumer never used it).
/// ARGV: group, consumer, id, uncount. Returns 1, or 0 if not ours.
pub(crate) const RELEASE: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p[1] or p[1][2] ~= ARGV[2] then return 0 end
local count = p[1][4]
if ARGV[4] == '1' and count > 0 then count = count - 1 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', 100000000000, 'RETRYCOUNT', count, 'JUSTID')
return 1
"#;

/// Prune: deletes the group's consumers that hold nothing and were idle
/// for `min_idle` ms (nodes that stopped or died, once their entries were
/// claimed), so restarts do not pile up consumers. A live consumer that
/// is deleted is made again by its next XREADGROUP.
/// ARGV: group, min_idle. Returns how many were deleted.
pub(crate) const PRUNE: &str = r#"
local n = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1]
    elseif c[i] == 'pending' then pending = c[i + 1]
    elseif c[i] == 'idle' then idle = c[i + 1] end
  end
  if name and pending == 0 and idle and idle > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    n = n + 1
  end
end
return n
"#;
