-- recsvc trending: the weighted sum of a scope's hourly buckets, top k, computed in Redis so that only k rows cross
-- the wire (reading every bucket's head into the service cost ~10,000 rows per refresh of each scope).
-- KEYS[1]: a scratch key in the scope's hash slot (P:pop:{scope}:tmp); KEYS[2..]: the hourly buckets
-- P:pop:{scope}:h:{hour}, all with the same {scope} tag, so the script stays on one Redis Cluster slot.
-- ARGV[1] k; ARGV[2..]: each bucket's weight (features.redis_store.trending_weight), in KEYS order.
-- Returns [item, score, item, score, ...], best first; ties by item id descending (ZREVRANGE's order).
local n = #KEYS - 1
if n < 1 then return {} end
local args = {"ZUNIONSTORE", KEYS[1], n}
for i = 2, #KEYS do args[#args + 1] = KEYS[i] end
args[#args + 1] = "WEIGHTS"
for i = 2, #ARGV do args[#args + 1] = ARGV[i] end
if redis.call(unpack(args)) == 0 then return {} end
local rows = redis.call("ZREVRANGE", KEYS[1], 0, tonumber(ARGV[1]) - 1, "WITHSCORES")
redis.call("DEL", KEYS[1])
return rows
