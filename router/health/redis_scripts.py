"""Lua scripts of the Redis state backend: each decision is one atomic round trip.

Time is Redis server time (`TIME`), never a replica's clock, so replicas with
skewed clocks still share one bucket correctly. Every key gets a TTL that lets it
vanish once it would hold nothing, so names of removed clients or providers do
not accumulate.

Buckets use the same model as `limits.Bucket` (aiolimiter's leaky bucket): a
level that drains at `rate` per second; an amount fits when `level + amount <=
capacity`. The level may exceed capacity after a `charge` (usage beyond the
reservation): later requests wait that debt out.
"""

from __future__ import annotations

# KEYS: the buckets. ARGV: mode ("take" | "adjust"), then per key: capacity, rate/s, amount.
# take: all amounts fit -> take them all and return "0"; otherwise take nothing and return
#       "<seconds until they all fit> <1-based index of the key that waits longest>"
#       (a string: Lua numbers would become integers).
# adjust: add `amount` (negative returns capacity) to every level, floored at 0.
BUCKETS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local mode = ARGV[1]
local levels = {}
local wait = 0
local worst = 0
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[i * 3 - 1])
  local rate = tonumber(ARGV[i * 3])
  local amount = tonumber(ARGV[i * 3 + 1])
  local saved = redis.call('HMGET', key, 'level', 'at')
  local level = tonumber(saved[1]) or 0
  local at = tonumber(saved[2]) or now
  if now > at then
    level = math.max(0, level - (now - at) * rate)
  end
  levels[i] = level
  if mode == 'take' then
    amount = math.min(math.max(amount, 0), capacity)
    local excess = level + amount - capacity
    if excess > 0 and math.max(excess / rate, 0.001) > wait then
      wait = math.max(excess / rate, 0.001)
      worst = i
    end
  end
end
if wait > 0 then
  return tostring(wait) .. ' ' .. worst
end
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[i * 3 - 1])
  local rate = tonumber(ARGV[i * 3])
  local amount = tonumber(ARGV[i * 3 + 1])
  if mode == 'take' then
    amount = math.min(math.max(amount, 0), capacity)
  end
  local level = math.max(0, levels[i] + amount)
  redis.call('HSET', key, 'level', tostring(level), 'at', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(level / rate * 1000) + 1000)
end
return '0'
"""

# KEYS[1]: the health hash. ARGV: pairs of (field, duration_ms) to publish; none = read only.
# A field holds the server time (ms) until which a target is ejected (`eject:<target>`)
# or a provider throttled (`throttle:<provider>`), or a probe found a provider back
# (`recovered:<provider>`); a later time never gets shortened, and a negative duration deletes the
# field (a probe that found the provider back clears its targets' ejections).
# Returns the live fields as a flat list: field, remaining_ms, field, remaining_ms, ...
HEALTH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = KEYS[1]
local longest = 0
for i = 1, #ARGV, 2 do
  local ms = tonumber(ARGV[i + 1])
  if ms < 0 then
    redis.call('HDEL', key, ARGV[i])
  else
    local until_ms = now + ms
    local saved = tonumber(redis.call('HGET', key, ARGV[i]))
    if saved == nil or until_ms > saved then
      redis.call('HSET', key, ARGV[i], until_ms)
    end
  end
end
local out = {}
local fields = redis.call('HGETALL', key)
for i = 1, #fields, 2 do
  local remaining = tonumber(fields[i + 1]) - now
  if remaining > 0 then
    out[#out + 1] = fields[i]
    out[#out + 1] = tostring(remaining)
    if remaining > longest then longest = remaining end
  else
    redis.call('HDEL', key, fields[i])
  end
end
if longest > 0 then
  redis.call('PEXPIRE', key, longest + 1000)
end
return out
"""
