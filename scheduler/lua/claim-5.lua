--[[
claim-5: lease the oldest claimable job of one queue to a worker.
  KEYS[1] wait list      <p>:wait:<queue>
  KEYS[2] active zset    <p>:active         (member job id, score lease deadline in ms, server clock)
  KEYS[3] wake list      <p>:wake:<queue>
  KEYS[4] dead list      <p>:dead
  KEYS[5] events stream  <p>:events
  ARGV[1] job key prefix <p>:job:
  ARGV[2] worker id
  ARGV[3] lease token    (random; renew/complete/fail/release must present it)
  ARGV[4] lease in ms
  ARGV[5] queue name     (recorded with dead letters)
Effects on success: attempt += 1, state = active, token/worker/claimed_ms set, <job>:lock = token with
  PX lease, active zset score = now + lease.
Returns:
  nil                                when nothing claimable is waiting
  {id, payload, attempt, deadline, remaining}
                                     the leased job (payload is raw: the caller validates it) and how
                                     many ids are still on the wait list
An id whose job hash is missing goes to the dead list with the reason (and a "dead" event), never lost
silently; an id whose job is no longer waiting (cancelled, duplicate entry) is dropped, its hash keeps its
state. At most 100 entries are examined per call to keep the script short.
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _ = 1, 100 do
  local id = redis.call('RPOP', KEYS[1])
  if not id then
    -- Nothing left: stale wake tokens would only cause spurious wake-ups.
    redis.call('DEL', KEYS[3])
    return nil
  end
  local jk = ARGV[1] .. id
  local state = redis.call('HGET', jk, 'state')
  if not state then
    local reason = 'job id on wait list ' .. ARGV[5] .. ' has no job hash ' .. jk
    redis.call('LPUSH', KEYS[4], cjson.encode({id = id, queue = ARGV[5], reason = reason, at_ms = now}))
    redis.call('XADD', KEYS[5], '*', 'type', 'dead', 'job', id, 'queue', ARGV[5], 'reason', reason)
  elseif state == 'waiting' then
    local attempt = redis.call('HINCRBY', jk, 'attempt', 1)
    local deadline = now + tonumber(ARGV[4])
    redis.call('HSET', jk, 'state', 'active', 'token', ARGV[3], 'worker', ARGV[2], 'claimed_ms', now)
    redis.call('SET', jk .. ':lock', ARGV[3], 'PX', ARGV[4])
    redis.call('ZADD', KEYS[2], deadline, id)
    local remaining = redis.call('LLEN', KEYS[1])
    if remaining == 0 then
      redis.call('DEL', KEYS[3])
    end
    return {id, redis.call('HGET', jk, 'data') or '', attempt, deadline, remaining}
  end
end
return nil
