-- recsvc ingest: apply a batch of events atomically, one event at a time, in one round trip.
-- Key names follow features/keys.py (a test checks they agree); every number comes from features/keys.py, rendered
-- into the config table literal below when the script is loaded (so a call carries no config to parse).
--
-- ARGV[1] prefix, e.g. "rs:v1"
-- ARGV[2] msgpack array of events; each event is an array (no nils: "" and 0 stand for absent):
--   1 event_id  2 aliases (array of "kind:value", customer first)  3 customer_id  4 type  5 channel  6 ts
--   7 item_id  8 quantity  9 value  10 country  11 session_id  12 offset of person_id in the log record
-- ARGV[3] now (epoch seconds, server-side receive time)
-- ARGV[2 + 2i], ARGV[3 + 2i] for event i (1-based): its recent-list entry (JSON) and its offline-log record
--   (msgpack of features.schema.LogRecord with person_id "", a one-byte empty string at byte `offset` + 1, which
--   the script replaces with the resolved person; Redis' cmsgpack cannot read msgspec's bin strings, so these are
--   separate binary-safe arguments).
-- Returns an array: 1 accepted, 0 duplicate, per event, in order.
--
-- Identity: the person is the customer_id when present; else the person an alias already points to (the first one
-- found, in the order customer, anonymous, device, email); else the first alias itself ("anonymous:abc"), marked
-- anon=1. An event with a customer_id links its other aliases to the customer; an anonymous person they stood for is
-- merged into the customer and every alias of it (its own name included) re-pointed. An alias linked to another
-- customer (a shared device) is re-pointed to the new one: last login wins for future events, past history stays
-- with the earlier customer, who loses the alias from its `ids`.
-- Per-country popularity (`co:<country>` scopes) is bounded by the registry P:countries (country -> last write, in
-- store time `now`): a registered country whose last write is COUNTRY_POP_TTL old or more counts as gone; a country not
-- registered (or gone) is admitted only after the gone ones are pruned (their popularity keys deleted) and while fewer
-- than COUNTRY_SCOPES_CAP remain. A refused country gets no `co:` keys; its events count everywhere else. Admitted
-- countries' popularity keys get EXPIRE COUNTRY_POP_TTL at the end of the batch.
-- Housekeeping is paced by the person's event count n: capped lists and sets are trimmed every 16th event (so they
-- overshoot their cap by at most 15 entries) and TTLs of the person's keys are refreshed on the first event, every
-- 16th, and the first event of each new day; a key created in between gets its TTL at once.
-- Keys are derived here from the prefix, which a single Redis accepts; on Redis Cluster the person's keys share a
-- hash tag, and the cross-slot parts (aliases, popularity, log) will need a per-slot split there.

local P = ARGV[1]
local cfg = __CONFIG__  -- a Lua table literal rendered from features/keys.py when the script is loaded
local events = cmsgpack.unpack(ARGV[2])
local now = tonumber(ARGV[3])

local E = cfg.decay_epoch
local DAY = 86400
local PARTS = {"p", "r", "ia", "ca", "b", "rt", "cart", "s", "ids"}
local LASTING = {"p", "r", "ia", "ca", "b", "rt", "ids"}  -- the parts that live PERSON_TTL
local LOG = P .. ":log"

local function pkey(person, part) return P .. ":c:{" .. person .. "}:" .. part end
local function akey(alias) return P .. ":id:{" .. alias .. "}" end

local function trim_zset(key, cap)
  local n = redis.call("ZCARD", key)
  if n > cap then redis.call("ZREMRANGEBYRANK", key, 0, n - cap - 1) end
end

local function decayed(w, ts, half_life) return w * math.pow(2, (ts - E) / half_life) end

-- Point `alias` at `person` and log the link; the previous owner, if another person, forgets it.
local function link(alias, person, ts, previous)
  redis.call("SET", akey(alias), person, "EX", cfg.person_ttl)
  if previous and previous ~= person then redis.call("SREM", pkey(previous, "ids"), alias) end
  redis.call("SADD", pkey(person, "ids"), alias)
  redis.call("EXPIRE", pkey(person, "ids"), cfg.person_ttl)
  redis.call("XADD", LOG, "*", "k", "l", "d", cmsgpack.pack({alias, person, ts}))
end

-- Move everything of anonymous person `old` into person `new`, re-point old's aliases (and old's own name, itself
-- an alias such as "anonymous:abc") to new, then delete old.
local function merge(old, new, ts)
  local op, np = pkey(old, "p"), pkey(new, "p")
  local h = redis.call("HGETALL", op)
  local new_last = tonumber(redis.call("HGET", np, "last"))
  local old_last, old_country = nil, nil
  for i = 1, #h, 2 do
    local f, v = h[i], h[i + 1]
    if f == "first" then
      local cur = tonumber(redis.call("HGET", np, f))
      if not cur or tonumber(v) < cur then redis.call("HSET", np, f, v) end
    elseif f == "last" or string.sub(f, 1, 3) == "ls:" then
      local cur = tonumber(redis.call("HGET", np, f))
      if not cur or tonumber(v) > cur then redis.call("HSET", np, f, v) end
      if f == "last" then old_last = tonumber(v) end
    elseif f == "monetary" then redis.call("HINCRBYFLOAT", np, f, v)
    elseif f == "n" or f == "orders" or string.sub(f, 1, 4) == "cnt:" then redis.call("HINCRBY", np, f, v)
    elseif f == "country" then old_country = v
    elseif f ~= "anon" then redis.call("HSETNX", np, f, v) end  -- traits: the customer's own value wins
  end
  -- country is the latest one seen: the anonymous history's when it is the more recent
  if old_country and (not new_last or (old_last and old_last > new_last)
      or redis.call("HEXISTS", np, "country") == 0) then
    redis.call("HSET", np, "country", old_country)
  end
  -- recent events: merged by time, newest first (ties: the customer's first), capped
  local merged = {}
  for rank, person in ipairs({new, old}) do
    for pos, blob in ipairs(redis.call("LRANGE", pkey(person, "r"), 0, -1)) do
      table.insert(merged, {cjson.decode(blob).ts or 0, rank, pos, blob})
    end
  end
  if #merged > 0 then
    table.sort(merged, function(a, b)
      if a[1] ~= b[1] then return a[1] > b[1] end
      if a[2] ~= b[2] then return a[2] < b[2] end
      return a[3] < b[3]
    end)
    local rk = pkey(new, "r")
    redis.call("DEL", rk)
    for i = 1, math.min(#merged, cfg.recent_cap) do redis.call("RPUSH", rk, merged[i][4]) end
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
  local aliases = redis.call("SMEMBERS", pkey(old, "ids"))
  table.sort(aliases)
  table.insert(aliases, 1, old)
  for _, part in ipairs(PARTS) do redis.call("DEL", pkey(old, part)) end
  for _, alias in ipairs(aliases) do link(alias, new, ts, nil) end
  for _, part in ipairs(LASTING) do redis.call("EXPIRE", pkey(new, part), cfg.person_ttl) end
end

-- The person an event belongs to, linking and merging as described in the header; second result: a new
-- anonymous person was started.
local function resolve(aliases, customer, ts)
  if customer ~= "" then
    for _, alias in ipairs(aliases) do
      if string.sub(alias, 1, 9) ~= "customer:" then
        local cur = redis.call("GET", akey(alias))
        if cur ~= customer then
          local anon = cur or alias  -- the anonymous person this alias stood for (itself when never linked)
          if anon ~= customer and redis.call("HGET", pkey(anon, "p"), "anon") == "1" then
            merge(anon, customer, ts)  -- links this alias too
          else
            link(alias, customer, ts, cur)
          end
        end
      end
    end
    return customer, false
  end
  local person, owners = nil, {}
  for i, alias in ipairs(aliases) do
    owners[i] = redis.call("GET", akey(alias))
    if owners[i] then person = owners[i]; break end
  end
  local fresh = not person
  if fresh then person = aliases[1] end
  for i, alias in ipairs(aliases) do
    local owner = owners[i]
    if owner == nil then owner = redis.call("GET", akey(alias)) end
    if alias ~= person and not owner then link(alias, person, ts, nil) end
  end
  return person, fresh
end

-- Work that can wait to the end of the batch: popularity increments summed per key and member, item counts per
-- item, TTLs once per key.
local zinc, hinc, expire_at, expire, trim = {}, {}, {}, {}, {}
local function zadd_later(key, member, inc)
  local t = zinc[key]
  if not t then t = {}; zinc[key] = t end
  t[member] = (t[member] or 0) + inc
end
local CREG = P .. ":countries"
local country_ok, country_keys = {}, {}
local function num(x) return string.format("%.17g", x) end  -- Lua's tostring keeps only 14 digits
local function admit_country(country)
  local ok = country_ok[country]
  if ok ~= nil then return ok end
  local stale_before = now - cfg.country_pop_ttl
  local last = tonumber(redis.call("ZSCORE", CREG, country))
  ok = true
  if not last or last < stale_before then
    local gone = redis.call("ZRANGEBYSCORE", CREG, "-inf", "(" .. num(stale_before))
    for _, c in ipairs(gone) do redis.call("DEL", P .. ":pop:{co:" .. c .. "}:pop") end
    if #gone > 0 then redis.call("ZREMRANGEBYSCORE", CREG, "-inf", "(" .. num(stale_before)) end
    ok = redis.call("ZCARD", CREG) < cfg.country_scopes_cap
  end
  if ok then
    redis.call("ZADD", CREG, num(now), country)
    country_keys[P .. ":pop:{co:" .. country .. "}:pop"] = true
  end
  country_ok[country] = ok
  return ok
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
  local item, qty, value, country, session, offset = e[7], e[8], e[9], e[10], e[11], e[12]
  if not redis.call("SET", P .. ":ev:{" .. eid .. "}", 1, "NX", "EX", cfg.dedupe_ttl) then
    results[i] = 0
  else
    results[i] = 1
    local person, anonymous = resolve(aliases, customer, ts)
    local pfx = P .. ":c:{" .. person .. "}:"  -- the person's keys are pfx .. part
    local pk = pfx .. "p"

    -- the person hash: one read, one write
    local tf, cf, lsf = "cnt:type:" .. etype, "cnt:channel:" .. channel, "ls:" .. channel
    local cur = redis.call("HMGET", pk, "n", tf, cf, "first", "last", lsf, "orders", "monetary")
    local n = (tonumber(cur[1]) or 0) + 1
    local first, last, ls = tonumber(cur[4]), tonumber(cur[5]), tonumber(cur[6])
    local set = {"n", n, tf, (tonumber(cur[2]) or 0) + 1, cf, (tonumber(cur[3]) or 0) + 1}
    if anonymous then table.insert(set, "anon"); table.insert(set, "1") end
    if not first or ts < first then table.insert(set, "first"); table.insert(set, ts) end
    if not last or ts >= last then
      table.insert(set, "last"); table.insert(set, ts)
      if country ~= "" then table.insert(set, "country"); table.insert(set, country) end
    end
    if not ls or ts > ls then table.insert(set, lsf); table.insert(set, ts) end
    if etype == "purchase" then
      table.insert(set, "orders"); table.insert(set, (tonumber(cur[7]) or 0) + 1)
      table.insert(set, "monetary"); table.insert(set, (tonumber(cur[8]) or 0) + value)
    elseif etype == "return" and value ~= 0 then
      table.insert(set, "monetary"); table.insert(set, (tonumber(cur[8]) or 0) - math.abs(value))
    end
    redis.call("HSET", pk, unpack(set))

    local trim_due = n % 16 == 0
    if n == 1 then  -- a new person: the other parts get their TTL when they are created
      expire[pk] = true
      expire[pfx .. "r"] = true
    elseif trim_due or (last and math.floor(ts / DAY) > math.floor(last / DAY)) then
      for _, part in ipairs(LASTING) do expire[pfx .. part] = true end
    end

    local rk = pfx .. "r"
    redis.call("LPUSH", rk, ARGV[2 + 2 * i])
    if trim_due then redis.call("LTRIM", rk, 0, cfg.recent_cap - 1) end

    if item ~= "" then
      local aw = cfg.affinity[etype]
      if aw then
        local inc = decayed(aw, ts, cfg.affinity_half_life)
        local ik = pfx .. "ia"
        if tonumber(redis.call("ZINCRBY", ik, inc, item)) == inc then expire[ik] = true end
        if trim_due then trim[ik] = cfg.item_aff_cap end
        local cats = item_cats(item)
        if cats ~= "" then
          local ck = pfx .. "ca"
          for cat in string.gmatch(cats, "[^|]+") do
            if tonumber(redis.call("ZINCRBY", ck, inc, cat)) == inc then expire[ck] = true end
          end
          if trim_due then trim[ck] = cfg.cat_aff_cap end
        end
      end
      if etype == "purchase" then
        local bk = pfx .. "b"
        if redis.call("ZADD", bk, "GT", ts, item) == 1 then expire[bk] = true end
        if trim_due then trim[bk] = cfg.purchased_cap end
        redis.call("HDEL", pfx .. "cart", item)
      elseif etype == "return" then
        local tk = pfx .. "rt"
        if redis.call("ZADD", tk, "GT", ts, item) == 1 then expire[tk] = true end
        if trim_due then trim[tk] = cfg.returned_cap end
      elseif etype == "add_to_cart" or etype == "remove_from_cart" then
        local q = math.abs(qty)
        if q == 0 then q = 1 end
        if etype == "remove_from_cart" then q = -q end
        local ck = pfx .. "cart"
        if redis.call("HINCRBY", ck, item, q) <= 0 then redis.call("HDEL", ck, item) end
        redis.call("EXPIRE", ck, cfg.cart_ttl)
      end
      local pw = cfg.popularity[etype]
      if pw then
        local inc = decayed(pw, ts, cfg.popular_half_life)
        local hour = math.floor(ts / 3600)
        local hour_expires = (hour + 1) * 3600 + cfg.trending_keep
        local scopes = {"all", "ch:" .. channel}
        if country ~= "" and admit_country(country) then scopes[3] = "co:" .. country end
        for _, scope in ipairs(scopes) do
          zadd_later(P .. ":pop:{" .. scope .. "}:pop", item, inc)
          if hour_expires > now then
            local hk = P .. ":pop:{" .. scope .. "}:h:" .. hour
            zadd_later(hk, item, pw)
            expire_at[hk] = hour_expires
          end
        end
        local nk = P .. ":i:{" .. item .. "}:n"
        local h = hinc[nk]
        if not h then h = {}; hinc[nk] = h end
        h[etype] = (h[etype] or 0) + 1
      end
    end

    -- the current session: live events only (history imports have none), never moved backwards
    if ts >= now - cfg.session_ttl then
      local sk = pfx .. "s"
      local sid, slast = nil, nil
      if n > 1 then  -- a new person has no session yet
        local cur_s = redis.call("HMGET", sk, "id", "last")
        sid, slast = cur_s[1], tonumber(cur_s[2])
      end
      local write = true
      if not sid or not slast then
        redis.call("HSET", sk, "id", session ~= "" and session or eid, "started", ts, "last", ts)
      elseif ts < slast then
        write = false
      elseif (session ~= "" and session ~= sid) or ts - slast > cfg.session_ttl then
        redis.call("HSET", sk, "id", session ~= "" and session or eid, "started", ts, "last", ts)
      else
        redis.call("HSET", sk, "last", ts)
      end
      if write then redis.call("EXPIRE", sk, cfg.session_ttl) end
    end

    local rec = ARGV[3 + 2 * i]
    redis.call("XADD", LOG, "*", "k", "e", "d",
      string.sub(rec, 1, offset) .. cmsgpack.pack(person) .. string.sub(rec, offset + 2))
  end
end

for key, members in pairs(zinc) do
  for member, inc in pairs(members) do redis.call("ZINCRBY", key, inc, member) end
  local at = expire_at[key]
  if at then
    redis.call("EXPIREAT", key, at)
  else
    if redis.call("ZCARD", key) > cfg.popular_cap * 1.1 then
      trim_zset(key, cfg.popular_cap)  -- in bulk: trimming every batch would cost a ZREMRANGEBYRANK per batch
    end
    if country_keys[key] then redis.call("EXPIRE", key, cfg.country_pop_ttl) end
  end
end
for key, cap in pairs(trim) do trim_zset(key, cap) end
for key, fields in pairs(hinc) do
  local fresh = false
  for f, c in pairs(fields) do
    if redis.call("HINCRBY", key, f, c) == c then fresh = true end
  end
  if fresh then redis.call("EXPIRE", key, cfg.item_stats_ttl) end
end
for key in pairs(expire) do redis.call("EXPIRE", key, cfg.person_ttl) end
return results
