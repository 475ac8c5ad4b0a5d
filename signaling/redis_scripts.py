"""The Lua scripts of the registry on Redis (:mod:`signaling.registry_redis`).

Each runs atomically in Redis, which is what makes a registration, a heartbeat or a
relay one step that no other process can interleave with. A registration value is
``SID PROCESS JSON``: the registration id (16 hex digits, characters 1-16), the
process id (16 hex digits, characters 18-33) and the JSON of role, fingerprint and
metadata. Key names: :mod:`signaling.redis_store`.

Source: Redis ``EVAL``/``EVALSHA`` (Lua 5.1).
"""

from __future__ import annotations

__all__ = ["HEARTBEAT", "REGISTER", "RELAY", "UNREGISTER"]

# KEYS: peer, peers, proc, epoch, restoring. ARGV: value, ttl_ms, peer_id, proc key
# prefix, proc value. Returns 0 (registered), 1 (taken) or 2 (Redis lost its data and
# the live processes are restoring their peers: try again).
REGISTER = """
if redis.call('EXISTS', KEYS[4]) == 0 or redis.call('EXISTS', KEYS[5]) == 1 then
  return 2
end
local cur = redis.call('GET', KEYS[1])
if cur and redis.call('EXISTS', ARGV[4] .. string.sub(cur, 18, 33)) == 1 then
  return 1
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[2])
return 0
"""

# KEYS: peer, peers. ARGV: sid, peer_id. Deletes the registration only if it is sid's.
UNREGISTER = """
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, 16) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

# KEYS: peer keys of this process's peers, then peers, proc, inbox, bindings, epoch,
# restoring. ARGV: ttl_ms, inbox_ttl_ms, proc value, now, client_binding_ttl_ms, key
# prefix, the epoch this process saw last (or ""), a new epoch token, max bindings per
# key, then (peer_id, value, fingerprint or "", role) per peer. A missing epoch is set;
# when this process had seen another one, Redis lost its data: restoring is set for one TTL, during
# which only heartbeats register. A registration Redis lost is set again, with its
# binding when that is gone too (in the same script: no one can claim the id in
# between; the key's least recently seen ids beyond max bindings per key are released,
# as a claim does). Returns {taken ids, restored ids, ids bound to another key, epoch}.
HEARTBEAT = """
local n = #KEYS - 6
local peers, proc, inbox, bindings = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3], KEYS[n + 4]
local epoch_key, restoring = KEYS[n + 5], KEYS[n + 6]
local now, client_ttl, prefix = ARGV[4], tonumber(ARGV[5]), ARGV[6]
local cap = tonumber(ARGV[9])
local known, epoch = ARGV[7], redis.call('GET', KEYS[n + 5])
if not epoch then
  epoch = ARGV[8]
  redis.call('SET', epoch_key, epoch)
end
if known ~= '' and epoch ~= known then
  redis.call('SET', restoring, '1', 'PX', ARGV[1], 'NX')
end
redis.call('SET', proc, ARGV[3], 'PX', ARGV[1])
redis.call('PEXPIRE', inbox, ARGV[2])
local taken, restored, unbound = {}, {}, {}
for i = 1, n do
  local at = 9 + 4 * (i - 1)
  local id, value, fp, role = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4]
  local cur = redis.call('GET', KEYS[i])
  if cur and string.sub(cur, 1, 16) == string.sub(value, 1, 16) then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  elseif cur then
    taken[#taken + 1] = id
  else
    local binding = prefix .. 'binding:' .. id
    local owner = redis.call('HGET', binding, 'fingerprint')
    if owner and owner ~= fp then
      unbound[#unbound + 1] = id
    else
      if fp ~= '' and not owner then
        redis.call('HSET', binding, 'fingerprint', fp, 'role', role,
                   'created_at', now, 'last_seen', now)
        if role == 'client' and client_ttl > 0 then
          redis.call('PEXPIRE', binding, client_ttl)
        end
        redis.call('SADD', bindings, id)
        local bound = prefix .. 'bound:' .. fp
        local before = redis.call('PTTL', bound)
        redis.call('ZADD', bound, now, id)
        if role ~= 'client' or client_ttl <= 0 then
          redis.call('PERSIST', bound)
        elseif before ~= -1 then
          redis.call('PEXPIRE', bound, client_ttl)
        end
        local extra = redis.call('ZCARD', bound) - cap
        if extra > 0 then
          for _, old in ipairs(redis.call('ZRANGE', bound, 0, extra)) do
            if extra > 0 and old ~= id then
              redis.call('DEL', prefix .. 'binding:' .. old)
              redis.call('SREM', bindings, old)
              redis.call('ZREM', bound, old)
              extra = extra - 1
            end
          end
        end
      end
      redis.call('SET', KEYS[i], value, 'PX', ARGV[1])
      redis.call('SADD', peers, id)
      restored[#restored + 1] = id
    end
  end
end
return {taken, restored, unbound, epoch}
"""

# KEYS: peer of the receiver. ARGV: key prefix, maxlen, inbox_ttl_ms, then field pairs.
# Returns the receiver's process, or false when it is not registered.
RELAY = """
local cur = redis.call('GET', KEYS[1])
if not cur then return false end
local proc = string.sub(cur, 18, 33)
if redis.call('EXISTS', ARGV[1] .. 'proc:' .. proc) == 0 then return false end
local inbox = ARGV[1] .. 'inbox:' .. proc
local unpack = table.unpack or unpack
redis.call('XADD', inbox, 'MAXLEN', '~', ARGV[2], '*', 'sid', string.sub(cur, 1, 16),
           unpack(ARGV, 4))
redis.call('PEXPIRE', inbox, ARGV[3])
return proc
"""
