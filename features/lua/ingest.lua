-- recsvc ingest: apply a batch of events atomically, in order, in one round trip.
-- Key names follow features/keys.py (a test checks they agree); every number comes from features/keys.py, rendered
-- into the config table literal below when the script is loaded (so a call carries no config to parse).
--
-- ARGV[1] prefix, e.g. "rs:v1"
-- ARGV[2] msgpack array of events, prepared by features.redis_store.lua_event; each event is an array (no nils: ""
--   and 0 stand for absent):
--   1 dedupe key (P:ev:{event_id})  2 event_id  3 the ids to resolve: array of "kind:value" of its anonymous, device
--   and email ids ("" when there are none)  4 customer_id  5 type  6 channel  7 ts  8 ts as text  9 item_id
--   10 quantity  11 value  12 country  13 session_id  14 affinity increment (forward-decayed) as text ("": none, the
--   type has no affinity weight or there is no item)  15 popularity weight as text ("": none)  16 popularity increment
--   (forward-decayed) as text  17 trending hour (hours since 1970; 0: that hour's bucket has expired already, e.g. a
--   history import)  18 byte offset of person_id in the log record (-1: the record names its person, the customer_id,
--   already)  19 the recent-list entry (JSON)  20 the offline-log record (msgpack of features.schema.LogRecord; for an
--   event without customer_id, person_id is "", a one-byte empty string at byte `offset` + 1, which the script
--   replaces with the resolved person). 19 and 20 are msgpack strings with binary content, which cmsgpack reads as
--   they are.
-- ARGV[3] now (epoch seconds, server-side receive time)
-- Numbers that go to Redis arrive as text (the increments in C99 hexadecimal, which Redis and tonumber read with
-- strtod, exactly): redis.call formats a Lua number with "%.17g", which costs about as much as the command it is an
-- argument of.
-- Returns an array: 1 accepted, 0 duplicate, per event, in order.
--
-- Identity: the person is the customer_id when present; else the person an alias already points to (the first one
-- found, in the order customer, anonymous, device, email); else the first alias itself ("anonymous:abc"), marked
-- anon=1. An event with a customer_id links its other aliases to the customer; an anonymous person they stood for is
-- merged into the customer and every alias of it (its own name included) re-pointed. An alias linked to another
-- customer (a shared device) is re-pointed to the new one: last login wins for future events, past history stays
-- with the earlier customer, who loses the alias from its `ids`.
-- The current session is three fields of the person hash (s:id, s:started, s:last), written by live events only
-- (ts within SESSION_TTL of now) and never moved backwards. It is over once its last event is SESSION_TTL older than
-- now (readers check the same), and the next live event starts a new one, as does a gap of more than SESSION_TTL
-- between events or a new client session_id; a new session is named after the client's session_id, else the event.
-- Per-country popularity (`co:<country>` scopes) is bounded by the registry P:countries (country -> last write, in
-- store time `now`): a registered country whose last write is COUNTRY_POP_TTL old or more counts as gone; a country not
-- registered (or gone) is admitted only after the gone ones are pruned (their popularity keys deleted) and while fewer
-- than COUNTRY_SCOPES_CAP remain. A refused country gets no `co:` keys; its events count everywhere else. Admitted
-- countries' popularity keys get EXPIRE COUNTRY_POP_TTL at the end of the batch.
--
-- Cost: every event is checked for duplicates, resolved and logged (XADD) at once, in order; what it does to its
-- person is applied to a per-batch copy of the person's state (the person-hash fields it needs, read once) and
-- written when the batch ends, one command per key: one HSET of the person hash, one LPUSH of the batch's recent
-- entries, one ZINCRBY per distinct item or category, one ZADD GT of the purchases. A merge writes both people's
-- pending state first, so it reads what a one-event-at-a-time run would. Popularity and trending increments are
-- summed per key and member, item counts per item, and written at the end.
-- Housekeeping is paced by the person's event count n: capped lists and sets are trimmed when the batch took the
-- person past a multiple of 16 (so they overshoot their cap by at most 15 entries) and TTLs of the person's keys are
-- refreshed on the first event, every 16th, and the first event of each new day; a key created in between gets its
-- TTL at once.
-- Keys are derived here from the prefix, which a single Redis accepts; on Redis Cluster the person's keys share a
-- hash tag, and the cross-slot parts (aliases, popularity, log) will need a per-slot split there.

local call = redis.call
local P = ARGV[1]
local cfg = __CONFIG__  -- a Lua table literal rendered from features/keys.py when the script is loaded
local events = cmsgpack.unpack(ARGV[2])
local now = tonumber(ARGV[3])

local DAY = 86400
local PERSON_TTL, CART_TTL = cfg.person_ttl_text, cfg.cart_ttl_text
local SESSION_TTL = cfg.session_ttl
local INT = cfg.int_text  -- "1" .. "64": counts as text without formatting them
local PARTS = {"p", "r", "ia", "ca", "b", "rt", "cart", "s", "ids"}  -- "s": where sessions were kept before
local LASTING = {"p", "r", "ia", "ca", "b", "rt", "ids"}  -- the parts that live PERSON_TTL
local LOG = P .. ":log"

local function pkey(person, part) return P .. ":c:{" .. person .. "}:" .. part end
local function akey(alias) return P .. ":id:{" .. alias .. "}" end

local function trim_zset(key, cap)
  local n = call("ZCARD", key)
  if n > cap then call("ZREMRANGEBYRANK", key, 0, n - cap - 1) end
end

-- Sum `inc` into t[k][member]. An increment arrives as text; a sum of several is a number.
local function acc(t, k, member, inc)
  local s = t[k]
  if not s then s = {}; t[k] = s end
  local cur = s[member]
  if cur then s[member] = tonumber(cur) + tonumber(inc) else s[member] = inc end
end

-- Per-batch state of the people this batch touched (see "Cost" above); flush(person) writes it and forgets it.
local people, touched = {}, {}
local flush

-- Point `alias` at `person` and log the link; the previous owner, if another person, forgets it.
local function link(alias, person, ts, previous)
  call("SET", akey(alias), person, "EX", PERSON_TTL)
  if previous and previous ~= person then call("SREM", pkey(previous, "ids"), alias) end
  call("SADD", pkey(person, "ids"), alias)
  call("EXPIRE", pkey(person, "ids"), PERSON_TTL)
  call("XADD", LOG, "*", "k", "l", "d", cmsgpack.pack({alias, person, ts}))
end

-- Move everything of anonymous person `old` into person `new`, re-point old's aliases (and old's own name, itself
-- an alias such as "anonymous:abc") to new, then delete old.
local function merge(old, new, ts)
  flush(old)
  flush(new)
  local op, np = pkey(old, "p"), pkey(new, "p")
  local h = call("HGETALL", op)
  local new_last = tonumber(call("HGET", np, "last"))
  local new_session = call("HEXISTS", np, "s:id") == 1
  local old_last, old_country = nil, nil
  for i = 1, #h, 2 do
    local f, v = h[i], h[i + 1]
    if f == "first" then
      local cur = tonumber(call("HGET", np, f))
      if not cur or tonumber(v) < cur then call("HSET", np, f, v) end
    elseif f == "last" or string.sub(f, 1, 3) == "ls:" then
      local cur = tonumber(call("HGET", np, f))
      if not cur or tonumber(v) > cur then call("HSET", np, f, v) end
      if f == "last" then old_last = tonumber(v) end
    elseif f == "monetary" then call("HINCRBYFLOAT", np, f, v)
    elseif f == "n" or f == "orders" or string.sub(f, 1, 4) == "cnt:" then call("HINCRBY", np, f, v)
    elseif f == "country" then old_country = v
    elseif string.sub(f, 1, 2) == "s:" then  -- the session: the customer's own, else the anonymous one
      if not new_session then call("HSET", np, f, v) end
    elseif f ~= "anon" then call("HSETNX", np, f, v) end  -- traits: the customer's own value wins
  end
  -- country is the latest one seen: the anonymous history's when it is the more recent
  if old_country and (not new_last or (old_last and old_last > new_last)
      or call("HEXISTS", np, "country") == 0) then
    call("HSET", np, "country", old_country)
  end
  -- recent events: merged by time, newest first (ties: the customer's first), capped
  local merged = {}
  for rank, person in ipairs({new, old}) do
    for pos, blob in ipairs(call("LRANGE", pkey(person, "r"), 0, -1)) do
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
    call("DEL", rk)
    for i = 1, math.min(#merged, cfg.recent_cap) do call("RPUSH", rk, merged[i][4]) end
  end
  for _, part in ipairs({"ia", "ca"}) do
    call("ZUNIONSTORE", pkey(new, part), 2, pkey(new, part), pkey(old, part))
  end
  trim_zset(pkey(new, "ia"), cfg.item_aff_cap)
  trim_zset(pkey(new, "ca"), cfg.cat_aff_cap)
  for _, part in ipairs({"b", "rt"}) do
    call("ZUNIONSTORE", pkey(new, part), 2, pkey(new, part), pkey(old, part), "AGGREGATE", "MAX")
  end
  local cart = call("HGETALL", pkey(old, "cart"))
  for i = 1, #cart, 2 do call("HINCRBY", pkey(new, "cart"), cart[i], cart[i + 1]) end
  if #cart > 0 then call("EXPIRE", pkey(new, "cart"), CART_TTL) end
  local aliases = call("SMEMBERS", pkey(old, "ids"))
  table.sort(aliases)
  table.insert(aliases, 1, old)
  for _, part in ipairs(PARTS) do call("DEL", pkey(old, part)) end
  for _, alias in ipairs(aliases) do link(alias, new, ts, nil) end
  for _, part in ipairs(LASTING) do call("EXPIRE", pkey(new, part), PERSON_TTL) end
end

-- The person an event belongs to, linking and merging as described in the header; second result: a new
-- anonymous person was started.
local function resolve(aliases, customer, ts)
  if customer ~= "" then
    if aliases == "" then return customer, false end
    for _, alias in ipairs(aliases) do
      local cur = call("GET", akey(alias))
      if cur ~= customer then
        local anon = cur or alias  -- the anonymous person this alias stood for (itself when never linked)
        if anon ~= customer then flush(anon) end  -- its anon flag may still be pending in this batch
        if anon ~= customer and call("HGET", pkey(anon, "p"), "anon") == "1" then
          merge(anon, customer, ts)  -- links this alias too
        else
          link(alias, customer, ts, cur)
        end
      end
    end
    return customer, false
  end
  local person, owners = nil, {}
  for i, alias in ipairs(aliases) do
    owners[i] = call("GET", akey(alias))
    if owners[i] then person = owners[i]; break end
  end
  local fresh = not person
  if fresh then person = aliases[1] end
  for i, alias in ipairs(aliases) do
    local owner = owners[i]
    if owner == nil then owner = call("GET", akey(alias)) end
    if alias ~= person and not owner then link(alias, person, ts, nil) end
  end
  return person, fresh
end

-- A person's batch state: pk, the person hash's key; v, its values read so far (a number, or false when absent; the
-- session's id as text); put, field-value pairs to HSET, put[1 .. k] (a field set by several events of the batch is
-- there several times: the last one wins); new: the hash had no events, so every part is known to be empty; recent:
-- entries to push, oldest first; ia, ca: increments per member; b, rt: latest time per item ({number, text}); flags
-- trim, refresh, cart. The first read takes the fields this event needs (the session's when it is live, orders and
-- monetary for a purchase or return); a later event of the same person reads what it needs and was not read yet.
-- Tables are built whole where they can be, so Lua sizes them once.
local function read(st, fields)  -- HMGET of fields not read yet
  local got = call("HMGET", st.pk, unpack(fields))
  local v = st.v
  for i, f in ipairs(fields) do
    if f == "s:id" then v[f] = got[i] else v[f] = tonumber(got[i]) or false end
  end
end

local function state(person, tf, cf, lf, live, money)
  local st = people[person]
  if st then
    if not st.new then
      local v, missing = st.v, {}
      if v[tf] == nil then missing[#missing + 1] = tf end
      if v[cf] == nil then missing[#missing + 1] = cf end
      if v[lf] == nil then missing[#missing + 1] = lf end
      if live and v["s:last"] == nil then missing[#missing + 1] = "s:id"; missing[#missing + 1] = "s:last" end
      if money and v.orders == nil then missing[#missing + 1] = "orders"; missing[#missing + 1] = "monetary" end
      if #missing > 0 then read(st, missing) end
    end
    return st
  end
  local pfx = P .. ":c:{" .. person .. "}:"
  local pk = pfx .. "p"
  local got, m  -- m: where orders and monetary are in got
  if live and money then
    got, m = call("HMGET", pk, "n", "first", "last", tf, cf, lf, "s:id", "s:last", "orders", "monetary"), 9
  elseif live then
    got = call("HMGET", pk, "n", "first", "last", tf, cf, lf, "s:id", "s:last")
  elseif money then
    got, m = call("HMGET", pk, "n", "first", "last", tf, cf, lf, "orders", "monetary"), 7
  else
    got = call("HMGET", pk, "n", "first", "last", tf, cf, lf)
  end
  local n = tonumber(got[1])
  local v = {n = n or false, first = tonumber(got[2]) or false, last = tonumber(got[3]) or false,
             [tf] = tonumber(got[4]) or false, [cf] = tonumber(got[5]) or false, [lf] = tonumber(got[6]) or false}
  if live then v["s:id"], v["s:last"] = got[7], tonumber(got[8]) or false end
  if m then v.orders, v.monetary = tonumber(got[m]) or false, tonumber(got[m + 1]) or false end
  st = {pfx = pfx, pk = pk, v = v, new = not n, recent = {}, k = 0,
        put = {false, false, false, false, false, false, false, false, false, false, false, false,
               false, false, false, false, false, false, false, false, false, false, false, false}}
  people[person] = st
  touched[#touched + 1] = person
  return st
end

local function write_zincr(key, incs, check)  -- true when check and a member was new
  local fresh = false
  for member, inc in pairs(incs) do
    local score = call("ZINCRBY", key, inc, member)
    if check and tonumber(score) == tonumber(inc) then fresh = true end
  end
  return fresh
end

local function write_latest(key, latest)  -- ZADD GT of {item -> {ts, text}}; true when an item was new
  local args, k = {"GT"}, 1
  for item, t in pairs(latest) do
    args[k + 1] = t[2]; args[k + 2] = item; k = k + 2
  end
  return call("ZADD", key, unpack(args)) > 0
end

flush = function(person)
  local st = people[person]
  if not st then return end
  people[person] = nil
  local pfx, new, trim = st.pfx, st.new, st.trim
  local put, k = st.put, st.k
  if k > 64 then  -- many events of this person: one value per field
    local last, fields = {}, {}
    for i = 1, k, 2 do
      local f = put[i]
      if last[f] == nil then fields[#fields + 1] = f end
      last[f] = put[i + 1]
    end
    put, k = {}, 0
    for _, f in ipairs(fields) do put[k + 1] = f; put[k + 2] = last[f]; k = k + 2 end
  end
  if k > 0 then call("HSET", st.pk, unpack(put, 1, k)) end
  local rk, iak = pfx .. "r", st.ia and pfx .. "ia"
  if #st.recent > 0 then call("LPUSH", rk, unpack(st.recent)) end
  if trim then call("LTRIM", rk, 0, cfg.recent_cap - 1) end
  -- new: every key written is new; else a key with a new member may have been created now
  local fresh_ia = iak and (write_zincr(iak, st.ia, not new) or new)
  local fresh_ca = st.ca and (write_zincr(pfx .. "ca", st.ca, not new) or new)
  local fresh_b = st.b and (write_latest(pfx .. "b", st.b) or new)
  local fresh_rt = st.rt and (write_latest(pfx .. "rt", st.rt) or new)
  if trim then
    if iak then trim_zset(iak, cfg.item_aff_cap) end
    if st.ca then trim_zset(pfx .. "ca", cfg.cat_aff_cap) end
    if st.b then trim_zset(pfx .. "b", cfg.purchased_cap) end
    if st.rt then trim_zset(pfx .. "rt", cfg.returned_cap) end
  end
  if st.cart then call("EXPIRE", pfx .. "cart", CART_TTL) end
  if st.refresh then
    for _, part in ipairs(LASTING) do call("EXPIRE", pfx .. part, PERSON_TTL) end
  else
    if new then
      call("EXPIRE", st.pk, PERSON_TTL)
      call("EXPIRE", rk, PERSON_TTL)
    end
    if fresh_ia then call("EXPIRE", iak, PERSON_TTL) end
    if fresh_ca then call("EXPIRE", pfx .. "ca", PERSON_TTL) end
    if fresh_b then call("EXPIRE", pfx .. "b", PERSON_TTL) end
    if fresh_rt then call("EXPIRE", pfx .. "rt", PERSON_TTL) end
  end
end

-- Work that can wait to the end of the batch: popularity increments summed per scope and member, trending per hour,
-- scope and member, item counts per item.
local zinc, trend, hinc = {}, {}, {}
local CREG = P .. ":countries"
local country_ok, country_scope = {}, {}
local function num(x) return string.format("%.17g", x) end  -- Lua's tostring keeps only 14 digits
-- The scope "co:<country>" when the country has (or is admitted to) popularity keys, else false.
local function admit_country(country)
  local ok = country_ok[country]
  if ok ~= nil then return ok end
  local stale_before = now - cfg.country_pop_ttl
  local last = tonumber(call("ZSCORE", CREG, country))
  local admit = true
  if not last or last < stale_before then
    local gone = call("ZRANGEBYSCORE", CREG, "-inf", "(" .. num(stale_before))
    for _, c in ipairs(gone) do call("DEL", P .. ":pop:{co:" .. c .. "}:pop") end
    if #gone > 0 then call("ZREMRANGEBYSCORE", CREG, "-inf", "(" .. num(stale_before)) end
    admit = call("ZCARD", CREG) < cfg.country_scopes_cap
  end
  ok = false
  if admit then
    call("ZADD", CREG, num(now), country)
    ok = "co:" .. country
    country_scope[ok] = true
  end
  country_ok[country] = ok
  return ok
end
local cats_cache = {}
local function item_cats(item)
  local c = cats_cache[item]
  if c == nil then
    c = call("HGET", P .. ":i:{" .. item .. "}", "cats") or ""
    cats_cache[item] = c
  end
  return c
end
local channel_scope = {}

local TF, CF, LF = {}, {}, {}  -- person-hash field names by type and channel
local results = {}
for i = 1, #events do
  local e = events[i]
  if call("SET", e[1], "1", "NX", "EX", cfg.dedupe_ttl_text, "GET") then  -- the marker was there: a replay
    results[i] = 0
  else
    results[i] = 1
    local etype, channel, ts, tss, item = e[5], e[6], e[7], e[8], e[9]
    local person, anonymous = resolve(e[3], e[4], ts)
    local live = ts >= now - SESSION_TTL  -- sessions are live events only (history imports have none)
    local tf, cf, lf = TF[etype], CF[channel], LF[channel]
    if not tf then tf = "cnt:type:" .. etype; TF[etype] = tf end
    if not cf then cf = "cnt:channel:" .. channel; CF[channel] = cf end
    if not lf then lf = "ls:" .. channel; LF[channel] = lf end
    local money = etype == "purchase" or etype == "return"
    local st = state(person, tf, cf, lf, live, money)
    local v, put, k = st.v, st.put, st.k

    -- the person hash
    local first, last, ls = v.first, v.last, v[lf]
    local n = (v.n or 0) + 1
    local ct, cc = (v[tf] or 0) + 1, (v[cf] or 0) + 1
    v.n, v[tf], v[cf] = n, ct, cc
    put[k + 1] = "n"; put[k + 2] = INT[n] or n
    put[k + 3] = tf; put[k + 4] = INT[ct] or ct
    put[k + 5] = cf; put[k + 6] = INT[cc] or cc
    k = k + 6
    if anonymous then put[k + 1] = "anon"; put[k + 2] = "1"; k = k + 2 end
    if not first or ts < first then v.first = ts; put[k + 1] = "first"; put[k + 2] = tss; k = k + 2 end
    if not last or ts >= last then
      v.last = ts; put[k + 1] = "last"; put[k + 2] = tss; k = k + 2
      if e[12] ~= "" then put[k + 1] = "country"; put[k + 2] = e[12]; k = k + 2 end
    end
    if not ls or ts > ls then v[lf] = ts; put[k + 1] = lf; put[k + 2] = tss; k = k + 2 end
    if money then
      local value, monetary = e[11], v.monetary or 0
      if etype == "purchase" then
        local orders = (v.orders or 0) + 1
        v.orders = orders; put[k + 1] = "orders"; put[k + 2] = INT[orders] or orders; k = k + 2
        monetary = monetary + value
      else
        monetary = monetary - math.abs(value)
      end
      if etype == "purchase" or value ~= 0 then
        v.monetary = monetary; put[k + 1] = "monetary"; put[k + 2] = monetary; k = k + 2
      end
    end
    if n % 16 == 0 then
      st.trim = true; st.refresh = true
    elseif n > 1 and last and math.floor(ts / DAY) > math.floor(last / DAY) then
      st.refresh = true
    end
    local recent = st.recent
    recent[#recent + 1] = e[19]

    if item ~= "" then
      local inc = e[14]
      if inc ~= "" then
        acc(st, "ia", item, inc)
        local cats = item_cats(item)
        if cats ~= "" then
          for cat in string.gmatch(cats, "[^|]+") do acc(st, "ca", cat, inc) end
        end
      end
      if etype == "purchase" or etype == "return" then
        local part = etype == "purchase" and "b" or "rt"
        local latest = st[part]
        if not latest then latest = {}; st[part] = latest end
        local t = latest[item]
        if not t or ts > t[1] then latest[item] = {ts, tss} end
        -- a new person's cart is empty unless this batch filled it
        if part == "b" and (not st.new or st.cart) then call("HDEL", st.pfx .. "cart", item) end
      elseif etype == "add_to_cart" or etype == "remove_from_cart" then
        local q = math.abs(e[10])
        if q == 0 then q = 1 end
        if etype == "remove_from_cart" then q = -q end
        local ck = st.pfx .. "cart"
        if call("HINCRBY", ck, item, INT[q] or q) <= 0 then call("HDEL", ck, item) end
        st.cart = true
      end
      local pw = e[15]
      if pw ~= "" then
        local inc, hour = e[16], e[17]
        local cs = channel_scope[channel]
        if not cs then cs = "ch:" .. channel; channel_scope[channel] = cs end
        local co = e[12] ~= "" and admit_country(e[12])
        acc(zinc, "all", item, inc)
        acc(zinc, cs, item, inc)
        if co then acc(zinc, co, item, inc) end
        if hour ~= 0 then
          local th = trend[hour]
          if not th then th = {}; trend[hour] = th end
          acc(th, "all", item, pw)
          acc(th, cs, item, pw)
          if co then acc(th, co, item, pw) end
        end
        local counts = hinc[item]
        if counts then counts[etype] = (counts[etype] or 0) + 1 else hinc[item] = {[etype] = 1} end
      end
    end

    -- the current session, never moved backwards
    if live then
      local sid, slast = v["s:id"], v["s:last"]
      local session = e[13]
      if not sid or not slast or slast < now - SESSION_TTL  -- none, or over
          or (ts >= slast and ((session ~= "" and session ~= sid) or ts - slast > SESSION_TTL)) then
        sid = session ~= "" and session or e[2]
        v["s:id"], v["s:last"] = sid, ts
        put[k + 1] = "s:id"; put[k + 2] = sid; put[k + 3] = "s:started"; put[k + 4] = tss
        put[k + 5] = "s:last"; put[k + 6] = tss; k = k + 6
      elseif ts >= slast then
        v["s:last"] = ts; put[k + 1] = "s:last"; put[k + 2] = tss; k = k + 2
      end
    end
    st.k = k

    local rec, offset = e[20], e[18]
    if offset >= 0 then
      rec = string.sub(rec, 1, offset) .. cmsgpack.pack(person) .. string.sub(rec, offset + 2)
    end
    call("XADD", LOG, "*", "k", "e", "d", rec)
  end
end

for _, person in ipairs(touched) do flush(person) end

for scope, members in pairs(zinc) do
  local key = P .. ":pop:{" .. scope .. "}:pop"
  write_zincr(key, members, false)
  if call("ZCARD", key) > cfg.popular_cap * 1.1 then
    trim_zset(key, cfg.popular_cap)  -- in bulk: trimming every batch would cost a ZREMRANGEBYRANK per batch
  end
  if country_scope[scope] then call("EXPIRE", key, cfg.country_pop_ttl_text) end
end
for hour, scopes in pairs(trend) do
  local at = (hour + 1) * 3600 + cfg.trending_keep
  for scope, members in pairs(scopes) do
    local key = P .. ":pop:{" .. scope .. "}:h:" .. hour
    write_zincr(key, members, false)
    call("EXPIREAT", key, at)
  end
end
for item, counts in pairs(hinc) do
  local key = P .. ":i:{" .. item .. "}:n"
  local fresh = false
  for f, c in pairs(counts) do
    if call("HINCRBY", key, f, INT[c] or c) == c then fresh = true end
  end
  if fresh then call("EXPIRE", key, cfg.item_stats_ttl_text) end
end
return results
