--[[
release-4: hand a leased job back unfinished (a worker shutting down past its grace period). The job goes
to the front of its wait list and the claim's attempt is given back: a hand-back is not a failure.
  KEYS[1] job hash       <p>:job:<id>
  KEYS[2] lock key       <p>:job:<id>:lock
  KEYS[3] active zset    <p>:active
  KEYS[4] events stream  <p>:events
  ARGV[1] job id
  ARGV[2] lease token
  ARGV[3] wait list prefix <p>:wait:
  ARGV[4] wake list prefix <p>:wake:
Effects: state = waiting, attempt -= 1, token/worker/lock removed, RPUSH on the wait list (claimed next),
  a wake token, event {type=requeued, job, attempt, queue, worker, reason=released}.
Returns: 1 released; -1 no such job; -2 lease expired, job already requeued; -3 lease taken over;
  -4 not active.
]]
local f = redis.call('HMGET', KEYS[1], 'state', 'token', 'queue', 'worker')
if not f[1] then return -1 end
if f[1] == 'waiting' then return -2 end
if f[1] ~= 'active' then return -4 end
if f[2] ~= ARGV[2] then return -3 end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', -1)
redis.call('HSET', KEYS[1], 'state', 'waiting')
redis.call('HDEL', KEYS[1], 'token', 'worker')
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('RPUSH', ARGV[3] .. f[3], ARGV[1])
redis.call('LPUSH', ARGV[4] .. f[3], '1')
redis.call('XADD', KEYS[4], '*', 'type', 'requeued', 'job', ARGV[1], 'attempt', attempt, 'queue', f[3],
  'worker', f[4] or '', 'reason', 'released')
return 1
