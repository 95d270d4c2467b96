-- Read what offer decisions need about many customers in one call (read-only).
--
-- ARGV[1] msgpack: { prefix, ids, ledger_since, top_items, top_categories, owned, alias_kinds, items, categories }
--   alias_kinds non-empty: the ids are any ids a customer is known by, resolved here to the person exactly as
--   RedisFeatureStore.resolve (and profile.lua, live.lua) do: an id qualified by an alias kind ("anonymous:abc",
--   "device:d1", "email:h"; customer ids cannot start so) is the person that alias points to, else the anonymous
--   person of that name, never a customer; a bare id is a person (customer) of that name, else the person an alias of
--   that value points to (kinds in order), else an anonymous person of that name, else itself (nobody). Empty: the
--   ids are person ids already.
--   keys are built from the prefix as features/offer_store.py names them (like ingest.lua does): per person the
--   hash P:c:{person}:p, affinities :ia and :ca, purchases :b, the contact ledger :ol and its state :os; one
--   person's keys share a hash tag, a batch spans slots (one Redis node; a cluster reads per slot)
--   ledger_since: a ZRANGEBYSCORE min such as "(1700000000.5"; top_items, top_categories: how many of the
--   strongest affinities count (ZREVRANGE); items, categories: those the catalog's offers name (only they are
--   returned, with their scores); owned: the items eligibility rules mention.
-- Returns one msgpack string: {catalog version, {person, hash, items, categories, owned, ledger, state}, ...} with
-- hash and state flat HGETALLs; items and categories flat {member, score, ...} of the catalog's among the strongest;
-- owned flat {index into owned (0-based), last purchase time, ...} of the owned ones; ledger flat {member, ts, ...}.
-- Scores travel as numbers (Lua's tonumber of Redis's "%.17g": the same double), members as strings. Redis formats
-- every score it returns to a script as text, so the script asks for scores only of the members it returns: the
-- ranking without scores, then ZMSCORE of the catalog's members found in it. One string instead of nested replies:
-- cheaper for Redis to send and for the client to decode.

local args = cmsgpack.unpack(ARGV[1])
local prefix, persons, since, n_items, n_cats = args[1], args[2], args[3], args[4], args[5]
local owned, kinds, items, cats = args[6], args[7], args[8], args[9]

local function set_of(list)
  local s = {}
  for _, x in ipairs(list) do s[x] = true end
  return s
end
local want_items, want_cats = set_of(items), set_of(cats)

local function resolve(id)
  for _, kind in ipairs(kinds) do
    if string.sub(id, 1, #kind + 1) == kind .. ":" then
      return redis.call("GET", prefix .. ":id:{" .. id .. "}") or id
    end
  end
  if redis.call("EXISTS", prefix .. ":c:{" .. id .. "}:p") == 1 then
    return id
  end
  for _, kind in ipairs(kinds) do
    local person = redis.call("GET", prefix .. ":id:{" .. kind .. ":" .. id .. "}")
    if person then
      return person
    end
  end
  for _, kind in ipairs(kinds) do
    if redis.call("EXISTS", prefix .. ":c:{" .. kind .. ":" .. id .. "}:p") == 1 then
      return kind .. ":" .. id
    end
  end
  return id
end

-- the wanted members among the n strongest, with their scores: flat {member, score, ...}, strongest first
local function strongest(key, n, want)
  if n <= 0 or next(want) == nil then
    return {}
  end
  local found = {}
  for _, m in ipairs(redis.call("ZREVRANGE", key, 0, n - 1)) do
    if want[m] then found[#found + 1] = m end
  end
  if #found == 0 then
    return found
  end
  local scores = redis.call("ZMSCORE", key, unpack(found))
  local out = {}
  for j, m in ipairs(found) do
    out[2 * j - 1] = m
    out[2 * j] = tonumber(scores[j])
  end
  return out
end

local function bought(key)
  local out = {}
  if #owned == 0 then
    return out
  end
  local scores = redis.call("ZMSCORE", key, unpack(owned))
  for j = 1, #owned do
    if scores[j] then
      out[#out + 1] = j - 1
      out[#out + 1] = tonumber(scores[j])
    end
  end
  return out
end

local out = {redis.call("GET", prefix .. ":o:catalog:v") or "0"}
for _, id in ipairs(persons) do
  local person = id
  if #kinds > 0 then
    person = resolve(id)
  end
  local base = prefix .. ":c:{" .. person .. "}:"
  local ledger = redis.call("ZRANGEBYSCORE", base .. "ol", since, "+inf", "WITHSCORES")
  for j = 2, #ledger, 2 do
    ledger[j] = tonumber(ledger[j])
  end
  out[#out + 1] = {
    person,
    redis.call("HGETALL", base .. "p"),
    strongest(base .. "ia", n_items, want_items),
    strongest(base .. "ca", n_cats, want_cats),
    bought(base .. "b"),
    ledger,
    redis.call("HGETALL", base .. "os"),
  }
end
return cmsgpack.pack(out)
