--[[
renew-3: extend a lease; only the holder of the current token may.
  KEYS[1] job hash       <p>:job:<id>
  KEYS[2] lock key       <p>:job:<id>:lock
  KEYS[3] active zset    <p>:active
  ARGV[1] job id
  ARGV[2] lease token
  ARGV[3] lease in ms
Returns:
  > 0  the new lease deadline (ms, server clock)
  -1   no such job
  -2   the lease expired and the job went back to its wait list (requeue-stalled ran)
  -3   the lease was taken over: the job is active under another token
  -4   the job is no longer active (completed, failed, cancelled, dead)
A lock that merely expired while nobody else claimed the job is re-created: the token still matches.
]]
local f = redis.call('HMGET', KEYS[1], 'state', 'token')
if not f[1] then return -1 end
if f[1] == 'waiting' then return -2 end
if f[1] ~= 'active' then return -4 end
if f[2] ~= ARGV[2] then return -3 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now + tonumber(ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[3], deadline, ARGV[1])
return deadline
