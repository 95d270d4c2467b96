-- recsvc ingest: apply a batch of events atomically, one event at a time, in one round trip.
-- Key names follow features/keys.py (a test checks they agree); every number comes in through ARGV[2].
--
-- ARGV[1] prefix, e.g. "rs:v1"
-- ARGV[2] unused (kept so the argument positions stay stable)
-- ARGV[3] JSON array of events; each event is an array (no nulls: "" and 0 stand for absent):
--   1 event_id  2 aliases (array of "kind:value", customer first)  3 customer_id  4 type  5 channel  6 ts
--   7 item_id  8 quantity  9 value  10 country  11 session_id
-- ARGV[4] now (epoch seconds, server-side receive time)
-- ARGV[3 + 2i], ARGV[4 + 2i] for event i (1-based): its recent-list entry (JSON) and its log record (msgpack),
--   passed as separate binary-safe arguments (Redis' cmsgpack cannot read msgpack bin strings).
-- Returns an array: 1 accepted, 0 duplicate, per event, in order.
--
-- Identity: the person is the customer_id when present; else the person an alias already points to; else the
-- first alias itself ("anonymous:abc"), marked anon=1. An event with a customer_id links its other aliases to the
-- customer and merges any anonymous person they pointed to. An alias linked to another customer is re-pointed
-- (last login wins for future events; past history stays with the earlier customer).
-- Keys are derived here from the prefix, which a single Redis accepts; on Redis Cluster the person's keys share a
-- hash tag, and the cross-slot parts (aliases, popularity, log) will need a per-slot split there.

local P = ARGV[1]
local cfg = __CONFIG__  -- a Lua table literal rendered from features/keys.py when the script is loaded
local events = cjson.decode(ARGV[3])
local now = tonumber(ARGV[4])

local E = cfg.decay_epoch
local PARTS = {"p", "r", "ia", "ca", "b", "rt", "cart", "s", "ids"}

local function pkey(person, part) return P .. ":c:{" .. person .. "}:" .. part end
local function akey(alias) return P .. ":id:{" .. alias .. "}" end

local function trim_zset(key, cap)
  local n = redis.call("ZCARD", key)
  if n > cap then redis.call("ZREMRANGEBYRANK", key, 0, n - cap - 1) end
end

local function decayed(w, ts, half_life) return w * math.pow(2, (ts - E) / half_life) end

local function max_field(key, field, value)
  local cur = tonumber(redis.call("HGET", key, field))
  if not cur or value > cur then redis.call("HSET", key, field, value) end
end

local function min_field(key, field, value)
  local cur = tonumber(redis.call("HGET", key, field))
  if not cur or value < cur then redis.call("HSET", key, field, value) end
end

-- Move everything of person `old` into person `new`, then delete `old`.
local function merge(old, new)
  local op, np = pkey(old, "p"), pkey(new, "p")
  local h = redis.call("HGETALL", op)
  for i = 1, #h, 2 do
    local f, v = h[i], h[i + 1]
    if f == "first" then min_field(np, f, tonumber(v))
    elseif f == "last" or string.sub(f, 1, 3) == "ls:" then max_field(np, f, tonumber(v))
    elseif f == "monetary" then redis.call("HINCRBYFLOAT", np, f, v)
    elseif f == "n" or f == "orders" or string.sub(f, 1, 4) == "cnt:" then redis.call("HINCRBY", np, f, v)
    elseif f == "anon" then -- the merged person is a customer
    else redis.call("HSETNX", np, f, v) end -- country, traits: the customer's own value wins
  end
  -- recent events: merge by time, newest first
  local merged = {}
  for _, part in ipairs({old, new}) do
    for _, blob in ipairs(redis.call("LRANGE", pkey(part, "r"), 0, -1)) do
      local ev = cjson.decode(blob)
      table.insert(merged, {ev.ts or 0, blob})
    end
  end
  if #merged > 0 then
    table.sort(merged, function(a, b) return a[1] > b[1] end)
    local rk = pkey(new, "r")
    redis.call("DEL", rk)
    for i = 1, math.min(#merged, cfg.recent_cap) do redis.call("RPUSH", rk, merged[i][2]) end
  end
  for _, part in ipairs({"ia", "ca"}) do
    redis.call("ZUNIONSTORE", pkey(new, part), 2, pkey(new, part), pkey(old, part))
  end
  trim_zset(pkey(new, "ia"), cfg.item_aff_cap)
  trim_zset(pkey(new, "ca"), cfg.cat_aff_cap)
  for _, part in ipairs({"b", "rt"}) do
    redis.call("ZUNIONSTORE", pkey(new, part), 2, pkey(new, part), pkey(old, part), "AGGREGATE", "MAX")
  end
  local cart = redis.call("HGETALL", pkey(old, "cart"))
  for i = 1, #cart, 2 do redis.call("HINCRBY", pkey(new, "cart"), cart[i], cart[i + 1]) end
  if #cart > 0 then redis.call("EXPIRE", pkey(new, "cart"), cfg.cart_ttl) end
  if redis.call("EXISTS", pkey(new, "s")) == 0 and redis.call("EXISTS", pkey(old, "s")) == 1 then
    redis.call("HSET", pkey(new, "s"), unpack(redis.call("HGETALL", pkey(old, "s"))))
    redis.call("EXPIRE", pkey(new, "s"), cfg.session_ttl)
  end
  redis.call("SUNIONSTORE", pkey(new, "ids"), pkey(new, "ids"), pkey(old, "ids"))
  for _, part in ipairs(PARTS) do redis.call("DEL", pkey(old, part)) end
  for _, part in ipairs({"p", "r", "ia", "ca", "b", "rt", "ids"}) do
    redis.call("EXPIRE", pkey(new, part), cfg.person_ttl)
  end
end

local function link(alias, person, ts)
  redis.call("SET", akey(alias), person, "EX", cfg.person_ttl)
  redis.call("SADD", pkey(person, "ids"), alias)
  redis.call("EXPIRE", pkey(person, "ids"), cfg.person_ttl)
  redis.call("XADD", P .. ":log", "*", "k", "l", "d", cmsgpack.pack({alias, person, ts}))
end

local function resolve(aliases, customer, ts)
  if customer ~= "" then
    for _, alias in ipairs(aliases) do
      if string.sub(alias, 1, 9) ~= "customer:" then
        local cur = redis.call("GET", akey(alias))
        if cur ~= customer then
          -- the anonymous person this alias stood for (itself when never linked), merged only if anonymous
          local anon = cur or alias
          if redis.call("HGET", pkey(anon, "p"), "anon") == "1" then merge(anon, customer) end
          link(alias, customer, ts)
        end
      end
    end
    return customer, false
  end
  local person = nil
  for _, alias in ipairs(aliases) do
    local cur = redis.call("GET", akey(alias))
    if cur then person = cur; break end
  end
  local fresh = not person
  if fresh then person = aliases[1] end
  for _, alias in ipairs(aliases) do
    if alias ~= person and not redis.call("GET", akey(alias)) then link(alias, person, ts) end
  end
  return person, fresh
end

-- Work that can wait to the end of the batch: summed per key and member, trimmed and expired once per key.
local zinc, zcap, hinc, expire_at, expire = {}, {}, {}, {}, {}
local function zadd_later(key, member, inc, check_cap)
  local t = zinc[key]
  if not t then t = {}; zinc[key] = t end
  t[member] = (t[member] or 0) + inc
  if check_cap then zcap[key] = cfg.popular_cap end
end
local cats_cache = {}
local function item_cats(item)
  local c = cats_cache[item]
  if c == nil then
    c = redis.call("HGET", P .. ":i:{" .. item .. "}", "cats") or ""
    cats_cache[item] = c
  end
  return c
end

local results = {}
for i = 1, #events do
  local e = events[i]
  local eid, aliases, customer, etype, channel, ts = e[1], e[2], e[3], e[4], e[5], e[6]
  local item, qty, value, country, session = e[7], e[8], e[9], e[10], e[11]
  if not redis.call("SET", P .. ":ev:{" .. eid .. "}", 1, "NX", "EX", cfg.dedupe_ttl) then
    results[i] = 0
  else
    results[i] = 1
    local person, anonymous = resolve(aliases, customer, ts)
    local pk = pkey(person, "p")
    local touched = {"p", "r"}  -- keys whose TTL to refresh
    -- the person's event count paces housekeeping: caps are enforced and TTLs refreshed every 16th event
    -- (so a capped set overshoots by at most 16), and always when a key may have just been created
    local housekeeping = redis.call("HINCRBY", pk, "n", 1) % 16 == 1
    redis.call("HINCRBY", pk, "cnt:type:" .. etype, 1)
    redis.call("HINCRBY", pk, "cnt:channel:" .. channel, 1)
    local lsf = "ls:" .. channel
    local cur = redis.call("HMGET", pk, "first", "last", lsf)
    local first, last, ls = tonumber(cur[1]), tonumber(cur[2]), tonumber(cur[3])
    local set = {}
    if anonymous then table.insert(set, "anon"); table.insert(set, "1") end
    if not first or ts < first then table.insert(set, "first"); table.insert(set, ts) end
    if not last or ts >= last then
      table.insert(set, "last"); table.insert(set, ts)
      if country ~= "" then table.insert(set, "country"); table.insert(set, country) end
    end
    if not ls or ts > ls then table.insert(set, lsf); table.insert(set, ts) end
    if #set > 0 then redis.call("HSET", pk, unpack(set)) end
    if etype == "purchase" then
      redis.call("HINCRBY", pk, "orders", 1)
      if value ~= 0 then redis.call("HINCRBYFLOAT", pk, "monetary", value) end
    elseif etype == "return" and value ~= 0 then
      redis.call("HINCRBYFLOAT", pk, "monetary", -math.abs(value))
    end
    local rk = pkey(person, "r")
    redis.call("LPUSH", rk, ARGV[3 + 2 * i])
    redis.call("LTRIM", rk, 0, cfg.recent_cap - 1)

    if item ~= "" then
      local aw = cfg.affinity[etype]
      if aw then
        local inc = decayed(aw, ts, cfg.affinity_half_life)
        local fresh = tonumber(redis.call("ZINCRBY", pkey(person, "ia"), inc, item)) == inc
        if housekeeping then zcap[pkey(person, "ia")] = cfg.item_aff_cap end
        if fresh or housekeeping then table.insert(touched, "ia") end
        local cats = item_cats(item)
        if cats ~= "" then
          for cat in string.gmatch(cats, "[^|]+") do
            if tonumber(redis.call("ZINCRBY", pkey(person, "ca"), inc, cat)) == inc then fresh = true end
          end
          if housekeeping then zcap[pkey(person, "ca")] = cfg.cat_aff_cap end
          if fresh or housekeeping then table.insert(touched, "ca") end
        end
      end
      if etype == "purchase" then
        if redis.call("ZADD", pkey(person, "b"), "GT", ts, item) == 1 or housekeeping then
          table.insert(touched, "b")
          if housekeeping then zcap[pkey(person, "b")] = cfg.purchased_cap end
        end
        redis.call("HDEL", pkey(person, "cart"), item)
      elseif etype == "return" then
        if redis.call("ZADD", pkey(person, "rt"), "GT", ts, item) == 1 or housekeeping then
          table.insert(touched, "rt")
          if housekeeping then zcap[pkey(person, "rt")] = cfg.returned_cap end
        end
      elseif etype == "add_to_cart" or etype == "remove_from_cart" then
        local q = math.abs(qty)
        if q == 0 then q = 1 end
        if etype == "remove_from_cart" then q = -q end
        local ck = pkey(person, "cart")
        if redis.call("HINCRBY", ck, item, q) <= 0 then redis.call("HDEL", ck, item) end
        redis.call("EXPIRE", ck, cfg.cart_ttl)
      end
      local pw = cfg.popularity[etype]
      if pw then
        local inc = decayed(pw, ts, cfg.popular_half_life)
        local hour = math.floor(ts / 3600)
        local hour_expires = (hour + 1) * 3600 + cfg.trending_keep
        for _, scope in ipairs({"all", "ch:" .. channel, country ~= "" and ("co:" .. country) or nil}) do
          zadd_later(P .. ":pop:{" .. scope .. "}:pop", item, inc, housekeeping)
          if hour_expires > now then
            local hk = P .. ":pop:{" .. scope .. "}:h:" .. hour
            zadd_later(hk, item, pw, nil)
            expire_at[hk] = math.floor(hour_expires)
          end
        end
        local nk = P .. ":i:{" .. item .. "}:n"
        local h = hinc[nk]
        if not h then h = {}; hinc[nk] = h end
        h[etype] = (h[etype] or 0) + 1
      end
    end

    -- the current session: only live events (history imports have none)
    if ts >= now - cfg.session_ttl then
      local sk = pkey(person, "s")
      local cur_s = redis.call("HMGET", sk, "id", "last")
      local sid, slast = cur_s[1], tonumber(cur_s[2])
      if session ~= "" and session ~= sid then sid = nil end
      if not sid or not slast or ts - slast > cfg.session_ttl then
        sid = session ~= "" and session or eid
        redis.call("HSET", sk, "id", sid, "started", ts, "last", ts)
      elseif ts > slast then
        redis.call("HSET", sk, "last", ts)
      end
      redis.call("EXPIRE", sk, cfg.session_ttl)
    end

    for _, part in ipairs(touched) do expire[pkey(person, part)] = cfg.person_ttl end
    redis.call("XADD", P .. ":log", "*", "k", "e", "d", ARGV[4 + 2 * i], "p", person)
  end
end

for key, members in pairs(zinc) do
  local fresh = false
  for member, inc in pairs(members) do
    if tonumber(redis.call("ZINCRBY", key, inc, member)) == inc then fresh = true end
  end
  if expire_at[key] and fresh then redis.call("EXPIREAT", key, expire_at[key]) end
  if zcap[key] and redis.call("ZCARD", key) > cfg.popular_cap * 1.1 then trim_zset(key, cfg.popular_cap) end
end
for key, cap in pairs(zcap) do
  if not zinc[key] then trim_zset(key, cap) end
end
for key, fields in pairs(hinc) do
  local fresh = false
  for f, n in pairs(fields) do
    if redis.call("HINCRBY", key, f, n) == n then fresh = true end
  end
  if fresh then redis.call("EXPIRE", key, cfg.item_stats_ttl) end
end
for key, ttl in pairs(expire) do redis.call("EXPIRE", key, ttl) end
return results
