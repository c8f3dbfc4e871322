--[[
cancel-4: cancel a job that has not finished. A waiting job leaves its wait list; an active job is marked
cancelled at once and its worker learns it at its next renew (-4), after which its finish is refused.
  KEYS[1] job hash       <p>:job:<id>
  KEYS[2] lock key       <p>:job:<id>:lock
  KEYS[3] active zset    <p>:active
  KEYS[4] events stream  <p>:events
  ARGV[1] job id
  ARGV[2] wait list prefix <p>:wait:
Effects: state = cancelled, finished_ms set, token/lock removed, out of the wait list or active set,
  event {type=cancelled, job, queue, previous}.
Returns: 1 cancelled while waiting; 2 cancelled while active; 0 already finished (nothing changed);
  -1 no such job.
]]
local f = redis.call('HMGET', KEYS[1], 'state', 'queue', 'attempt')
if not f[1] then return -1 end
local code
if f[1] == 'waiting' then
  redis.call('LREM', ARGV[2] .. f[2], 0, ARGV[1])
  code = 1
elseif f[1] == 'active' then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('DEL', KEYS[2])
  code = 2
else
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_ms', now)
redis.call('HDEL', KEYS[1], 'token')
redis.call('XADD', KEYS[4], '*', 'type', 'cancelled', 'job', ARGV[1], 'attempt', f[3] or '0', 'queue', f[2],
  'previous', f[1])
return code
