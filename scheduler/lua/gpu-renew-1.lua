--[[
gpu-renew-1: keep a worker's claim on one GPU alive (see gpu_claim.h).
  KEYS[1] claim key      <p>:gpu:<gpu id>
  ARGV[1] owner          the worker id holding the claim
  ARGV[2] ttl in ms
Effects: when the key holds ARGV[1], its TTL is reset; when the key is gone (it expired during a stall, or
  Redis lost it), it is set again for ARGV[1]; a key held by another owner is left alone.
Returns:
   1  renewed
   2  re-taken (the key had disappeared)
   0  another owner holds the GPU now
]]
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
