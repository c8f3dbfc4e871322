--[[
complete-4: finish a job successfully; only the holder of the current token may.
  KEYS[1] job hash       <p>:job:<id>
  KEYS[2] lock key       <p>:job:<id>:lock
  KEYS[3] active zset    <p>:active
  KEYS[4] events stream  <p>:events
  ARGV[1] job id
  ARGV[2] lease token
  ARGV[3] result JSON
Effects: state = completed, result and finished_ms set, token/lock removed, out of the active set,
  event {type=completed, job, attempt, queue, worker, result} appended to the stream.
Returns:
   1  completed
  -1  no such job
  -2  the lease expired and the job went back to its wait list (a late finish: rejected)
  -3  the lease was taken over by another claim (a late finish: rejected)
  -4  the job is no longer active (completed, failed, cancelled, dead)
]]
local f = redis.call('HMGET', KEYS[1], 'state', 'token', 'attempt', 'queue', 'worker')
if not f[1] then return -1 end
if f[1] == 'waiting' then return -2 end
if f[1] ~= 'active' then return -4 end
if f[2] ~= ARGV[2] then return -3 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'state', 'completed', 'result', ARGV[3], 'finished_ms', now)
redis.call('HDEL', KEYS[1], 'token')
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[4], '*', 'type', 'completed', 'job', ARGV[1], 'attempt', f[3], 'queue', f[4],
  'worker', f[5], 'result', ARGV[3])
return 1
