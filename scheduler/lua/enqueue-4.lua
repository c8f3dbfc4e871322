--[[
enqueue-4: put a job on its queue's wait list (new, or a finished job the scheduler retries).
  KEYS[1] job hash       <p>:job:<id>
  KEYS[2] wait list      <p>:wait:<queue>   (LPUSH here, claim RPOPs: FIFO)
  KEYS[3] wake list      <p>:wake:<queue>   (one token per enqueue; idle workers BLPOP it)
  KEYS[4] queue set      <p>:queues
  ARGV[1] job id
  ARGV[2] payload JSON   {id, experiment_id, type, params, attempt, max_attempts}
  ARGV[3] queue name
  ARGV[4] max attempts
  ARGV[5] wake list cap  (tokens beyond it are useless: woken workers drain the queue)
Returns:
   1  enqueued a new job (attempt counter starts at 0)
   2  re-enqueued a finished job (completed/failed/cancelled/dead); its attempt counter is kept
   0  the job is already waiting or active: nothing changed (enqueue is idempotent)
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'waiting' or state == 'active' then
  return 0
end
redis.call('HDEL', KEYS[1], 'token', 'worker', 'result', 'error', 'retryable', 'finished_ms', 'progress')
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'queue', ARGV[3], 'state', 'waiting', 'max_attempts', ARGV[4],
  'enqueued_ms', now)
if not state then
  redis.call('HSET', KEYS[1], 'attempt', 0)
end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('LPUSH', KEYS[3], '1')
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
redis.call('SADD', KEYS[4], ARGV[3])
if state then
  return 2
end
return 1
