-- Apply one offer outcome event to a customer's ledger state and to the offer's acceptance counts, once per event
-- id, in one atomic step: the event's mark and its counts are written together, so a retry after a failure either
-- finds both (a duplicate, counted once) or neither (counted now). The posterior hash lives in another slot than the
-- person's keys: like the batch scripts, this assumes one Redis node.
--
-- KEYS: ledger zset (P:c:{person}:ol), state hash (P:c:{person}:os), outcome marks zset (P:c:{person}:oo),
--       person hash (P:c:{person}:p, for the segment when the decision is no longer in the ledger),
--       the offer's posterior hash (P:o:{offer}:post: `<segment>\x1f{i,a,d}` -> count)
-- ARGV: event_id, type (offer_impression|offer_accept|offer_dismiss), offer_id, decision_id ("" = none), ts, now,
--       marks_keep_s, state_ttl_s
-- Returns {impression, accept, dismiss, segment}: 1 where this event added a count. Per (decision, offer) an
-- impression counts once, and an accept or dismiss without a reported impression counts as its impression too.
-- An accept suppresses the offer on every channel (a:<offer>); a dismiss starts its cool-down (d:<offer>); both
-- bump the ledger version so that a decision computed before them cannot reserve.

local ledger, state, marks, person, posterior = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local event_id, kind, offer, decision = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ts, now, keep, state_ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local SEP = "\031"

local seen = "e" .. SEP .. event_id
if redis.call("ZSCORE", marks, seen) then
  return {0, 0, 0, ""}
end
redis.call("ZREMRANGEBYSCORE", marks, "-inf", "(" .. string.format("%.6f", now - keep))
redis.call("ZADD", marks, now, seen)

local segment = false
if decision ~= "" then
  local head = decision .. SEP .. offer .. SEP
  for _, m in ipairs(redis.call("ZRANGE", ledger, 0, -1)) do
    if string.sub(m, 1, #head) == head then
      local rest = string.sub(m, #head + 1)
      local j = string.find(rest, SEP, 1, true)
      segment = j and string.sub(rest, j + 1) or ""
      break
    end
  end
end
if not segment then
  segment = redis.call("HGET", person, "t:segment") or "unknown"
end

local base = (decision ~= "" and decision or ("ev:" .. event_id)) .. SEP .. offer
local imp, acc, dis = 0, 0, 0
if not redis.call("ZSCORE", marks, "i" .. SEP .. base) then
  redis.call("ZADD", marks, now, "i" .. SEP .. base)
  imp = 1
end
if kind == "offer_accept" and not redis.call("ZSCORE", marks, "a" .. SEP .. base) then
  redis.call("ZADD", marks, now, "a" .. SEP .. base)
  acc = 1
  redis.call("HSETNX", state, "a:" .. offer, ts)
  redis.call("HINCRBY", state, "ver", 1)
elseif kind == "offer_dismiss" and not redis.call("ZSCORE", marks, "d" .. SEP .. base) then
  redis.call("ZADD", marks, now, "d" .. SEP .. base)
  dis = 1
  local prev = tonumber(redis.call("HGET", state, "d:" .. offer) or "0")
  if ts > prev then
    redis.call("HSET", state, "d:" .. offer, ts)
  end
  redis.call("HINCRBY", state, "ver", 1)
end
redis.call("EXPIRE", marks, math.floor(keep))
if acc == 1 or dis == 1 then
  redis.call("EXPIRE", state, state_ttl)
end
if imp == 1 then
  redis.call("HINCRBY", posterior, segment .. SEP .. "i", 1)
end
if acc == 1 then
  redis.call("HINCRBY", posterior, segment .. SEP .. "a", 1)
elseif dis == 1 then
  redis.call("HINCRBY", posterior, segment .. SEP .. "d", 1)
end
return {imp, acc, dis, segment}
