--[[
fail-4: record that a job failed; only the holder of the current token may. Whether to retry is the
scheduler's decision (it re-enqueues); this script only records.
  KEYS[1] job hash       <p>:job:<id>
  KEYS[2] lock key       <p>:job:<id>:lock
  KEYS[3] active zset    <p>:active
  KEYS[4] events stream  <p>:events
  ARGV[1] job id
  ARGV[2] lease token
  ARGV[3] error text
  ARGV[4] retryable      "1" when a retry could succeed (I/O, Redis, database trouble), else "0"
Effects: state = failed, error/retryable/finished_ms set, token/lock removed, out of the active set,
  event {type=failed, job, attempt, max_attempts, queue, worker, error, retryable}.
Returns: 1 failed; -1 no such job; -2 lease expired, job requeued; -3 lease taken over; -4 not active.
]]
local f = redis.call('HMGET', KEYS[1], 'state', 'token', 'attempt', 'queue', 'worker', 'max_attempts')
if not f[1] then return -1 end
if f[1] == 'waiting' then return -2 end
if f[1] ~= 'active' then return -4 end
if f[2] ~= ARGV[2] then return -3 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'state', 'failed', 'error', ARGV[3], 'retryable', ARGV[4], 'finished_ms', now)
redis.call('HDEL', KEYS[1], 'token')
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[4], '*', 'type', 'failed', 'job', ARGV[1], 'attempt', f[3], 'max_attempts', f[6] or '1',
  'queue', f[4], 'worker', f[5], 'error', ARGV[3], 'retryable', ARGV[4])
return 1
