--[[
gpu-release-1: give a GPU claim back, only if it is still the caller's (see gpu_claim.h).
  KEYS[1] claim key      <p>:gpu:<gpu id>
  ARGV[1] owner          the worker id that held the claim
Effects: deletes the key when it holds ARGV[1].
Returns:
   1  released
   0  the key was gone or held by another owner (nothing changed)
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
