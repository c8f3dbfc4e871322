--[[
dead-letter-5: move a leased job whose message is malformed (bad JSON, a missing or mistyped field) to the
dead-letter list with the reason. The job hash stays (state dead) so nothing is lost.
  KEYS[1] job hash       <p>:job:<id>
  KEYS[2] lock key       <p>:job:<id>:lock
  KEYS[3] active zset    <p>:active
  KEYS[4] dead list      <p>:dead
  KEYS[5] events stream  <p>:events
  ARGV[1] job id
  ARGV[2] lease token
  ARGV[3] reason
Effects: state = dead, error = reason, token/lock removed, out of the active set, LPUSH on the dead list
  of {id, queue, reason, data (raw payload), attempt, at_ms}, event {type=dead, job, queue, reason}.
Returns: 1 dead-lettered; -1 no such job; -2 lease expired, job requeued; -3 lease taken over;
  -4 not active.
]]
local f = redis.call('HMGET', KEYS[1], 'state', 'token', 'queue', 'data', 'attempt')
if not f[1] then return -1 end
if f[1] == 'waiting' then return -2 end
if f[1] ~= 'active' then return -4 end
if f[2] ~= ARGV[2] then return -3 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'state', 'dead', 'error', ARGV[3], 'finished_ms', now)
redis.call('HDEL', KEYS[1], 'token')
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('LPUSH', KEYS[4], cjson.encode({id = ARGV[1], queue = f[3] or '', reason = ARGV[3], data = f[4] or '',
  attempt = tonumber(f[5]) or 0, at_ms = now}))
redis.call('XADD', KEYS[5], '*', 'type', 'dead', 'job', ARGV[1], 'queue', f[3] or '', 'reason', ARGV[3])
return 1
