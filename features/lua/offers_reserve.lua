-- Reserve contact budget for offer decisions and log each decision, atomically, for one or many customers.
--
-- ARGV[1] msgpack: { now, keep_s, state_ttl_s, export_ttl_s, prefix, caps, checks, items }; ARGV[2]: the items'
-- records and lines, concatenated (raw bytes travel outside the msgpack: the script's decoder has no binary type)
--   caps    = { {key ("total" or a channel), max, window_s}, ... }             shared by the items (one batch)
--   checks  = { {offer, limit (0 = none), limit_window_s, cooldown_s}, ... }  shared by the items
--   item    = { person, expected_version, export_id ("" = live), contacts, cap indexes, check indexes,
--               record_offset, record_length, line_offset, line_length }
--   contacts = flat { member, ts, channel, offer, ... }    member = decision \031 offer \031 channel \031 segment
--   record  = the msgpack DecisionRecord for the offline log; line = the export's NDJSON line
-- Keys are built from the prefix as features/offer_store.py names them: P:c:{person}:ol (ledger zset), :os (state
-- hash), :ox (export marks); one person's keys share a hash tag, a batch spans slots (one Redis node, as ingest.lua).
-- Each record of an item reserved (or logged without contacts) goes to the offline-log stream P:log (k=d, d=record)
-- in the same atomic step as its contacts. (One entry per record: batching them into kind "D" entries saved nothing
-- measurable, the script then copying every record twice more.)
-- Returns one reply per item:
--   {1}                          reserved and logged
--   {2, line}                    this export already decided this customer: nothing charged, the old line returned
--   {3, "conflict", ledger, state}  the ledger changed since the caller read it: decide again on this state
--   {4, reason, ledger, state}   a cap or rule re-check failed (clock skew, config mismatch): nothing reserved
-- A decision without contacts (nothing to offer) is logged without any check.

local args = cmsgpack.unpack(ARGV[1])
local now, keep, state_ttl, export_ttl, prefix = args[1], args[2], args[3], args[4], args[5]
local caps, checks, items = args[6], args[7], args[8]
local blobs = ARGV[2]
local log = prefix .. ":log"
local SEP = "\031"

local function field(member, n)
  local start = 1
  for _ = 1, n - 1 do
    local i = string.find(member, SEP, start, true)
    if not i then return nil end
    start = i + 1
  end
  local j = string.find(member, SEP, start, true)
  return string.sub(member, start, j and j - 1 or -1)
end

-- why the reservation may not go ahead ("" when it may), on the ledger and state as they are now
local function recheck(it, ledger, state)
  local flat = redis.call("HGETALL", state)
  local st = {}
  for j = 1, #flat, 2 do
    st[flat[j]] = flat[j + 1]
  end
  if tonumber(st["ver"] or "0") ~= it[2] then
    return "conflict"
  end
  local contacts = it[4]
  local existing = redis.call("ZRANGE", ledger, 0, -1, "WITHSCORES")
  if #existing > 0 and tonumber(existing[2]) <= now - keep then
    redis.call("ZREMRANGEBYSCORE", ledger, "-inf", "(" .. string.format("%.6f", now - keep))
    existing = redis.call("ZRANGE", ledger, 0, -1, "WITHSCORES")
  end
  for _, c in ipairs(it[5]) do
    local cap = caps[c]
    local key, max, window = cap[1], cap[2], cap[3]
    local used = 0
    for j = 1, #existing, 2 do
      if tonumber(existing[j + 1]) > now - window and (key == "total" or field(existing[j], 3) == key) then
        used = used + 1
      end
    end
    for j = 3, #contacts, 4 do
      if key == "total" or contacts[j] == key then used = used + 1 end
    end
    if used > max then
      return "cap:" .. key
    end
  end
  for _, c in ipairs(it[6]) do
    local chk = checks[c]
    local offer = chk[1]
    if st["a:" .. offer] then
      return "accepted:" .. offer
    end
    local d = st["d:" .. offer]
    if d and now - tonumber(d) < chk[4] then
      return "cooldown:" .. offer
    end
    if chk[2] > 0 then
      local used = 1
      for j = 1, #existing, 2 do
        if tonumber(existing[j + 1]) > now - chk[3] and field(existing[j], 2) == offer then
          used = used + 1
        end
      end
      if used > chk[2] then
        return "offer_limit:" .. offer
      end
    end
  end
  return ""
end

local out = {}
for i, it in ipairs(items) do
  local base = prefix .. ":c:{" .. it[1] .. "}:"
  local ledger, state, exported = base .. "ol", base .. "os", base .. "ox"
  local export_id = it[3]
  local prior = false
  if export_id ~= "" then
    prior = redis.call("HGET", exported, export_id)
  end
  if prior then
    out[i] = {2, prior}
  else
    local contacts = it[4]
    local why = ""
    if #contacts > 0 then
      why = recheck(it, ledger, state)
    end
    if why == "" then
      if #contacts > 0 then
        local zadd = {}
        for j = 1, #contacts, 4 do
          zadd[#zadd + 1] = contacts[j + 1]
          zadd[#zadd + 1] = contacts[j]
        end
        redis.call("ZADD", ledger, unpack(zadd))
        redis.call("HINCRBY", state, "ver", 1)
        redis.call("EXPIRE", ledger, math.floor(keep) + 86400)
        redis.call("EXPIRE", state, state_ttl)
      end
      redis.call("XADD", log, "*", "k", "d", "d", string.sub(blobs, it[7] + 1, it[7] + it[8]))
      if export_id ~= "" then
        redis.call("HSET", exported, export_id, string.sub(blobs, it[9] + 1, it[9] + it[10]))
        redis.call("EXPIRE", exported, export_ttl)
      end
      out[i] = {1}
    else
      out[i] = {why == "conflict" and 3 or 4, why, redis.call("ZRANGE", ledger, 0, -1, "WITHSCORES"),
                redis.call("HGETALL", state)}
    end
  end
end
return out
