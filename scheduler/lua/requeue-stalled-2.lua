--[[
requeue-stalled-2: jobs whose lease expired (their worker died or stopped renewing) go back to the front
of their wait list; a job that has used all its attempts is marked failed instead (retryable, so the
scheduler can still decide).
  KEYS[1] active zset    <p>:active
  KEYS[2] events stream  <p>:events
  ARGV[1] job key prefix <p>:job:
  ARGV[2] wait list prefix <p>:wait:
  ARGV[3] wake list prefix <p>:wake:
  ARGV[4] at most this many jobs per call
Effects per requeued job: state = waiting, token/worker removed, RPUSH on the wait list, a wake token,
  event {type=requeued, job, attempt, queue, worker, reason=lease expired}.
Per exhausted job: state = failed, error set, event {type=failed, ..., retryable=1}.
Returns: a flat array {id1, outcome1, id2, outcome2, ...}, outcome "requeued" or "failed".
Entries whose lock still exists (renewed by its holder) get their score corrected and stay active;
entries whose job hash is gone or no longer active are removed from the set.
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, id in ipairs(ids) do
  local jk = ARGV[1] .. id
  local f = redis.call('HMGET', jk, 'state', 'attempt', 'max_attempts', 'queue', 'worker')
  if f[1] ~= 'active' then
    redis.call('ZREM', KEYS[1], id)
  else
    local ttl = redis.call('PTTL', jk .. ':lock')
    if ttl > 0 then
      redis.call('ZADD', KEYS[1], now + ttl, id)
    else
      redis.call('ZREM', KEYS[1], id)
      redis.call('DEL', jk .. ':lock')
      local attempt = tonumber(f[2]) or 0
      local max_attempts = tonumber(f[3]) or 1
      if attempt >= max_attempts then
        local err = 'lease expired on attempt ' .. attempt .. ' of ' .. max_attempts .. ' (worker ' ..
          (f[5] or '?') .. ' stopped renewing)'
        redis.call('HSET', jk, 'state', 'failed', 'error', err, 'retryable', '1', 'finished_ms', now)
        redis.call('HDEL', jk, 'token')
        redis.call('XADD', KEYS[2], '*', 'type', 'failed', 'job', id, 'attempt', attempt, 'max_attempts',
          max_attempts, 'queue', f[4] or '', 'worker', f[5] or '', 'error', err, 'retryable', '1')
        out[#out + 1] = id
        out[#out + 1] = 'failed'
      else
        redis.call('HSET', jk, 'state', 'waiting')
        redis.call('HDEL', jk, 'token', 'worker')
        redis.call('RPUSH', ARGV[2] .. f[4], id)
        redis.call('LPUSH', ARGV[3] .. f[4], '1')
        redis.call('XADD', KEYS[2], '*', 'type', 'requeued', 'job', id, 'attempt', attempt, 'queue', f[4],
          'worker', f[5] or '', 'reason', 'lease expired')
        out[#out + 1] = id
        out[#out + 1] = 'requeued'
      end
    end
  end
end
return out
