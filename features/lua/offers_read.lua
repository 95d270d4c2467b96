-- Read what offer decisions need about many customers in one call (read-only).
--
-- ARGV[1] msgpack: { prefix, ids, ledger_since, top_items, top_categories, owned, alias_kinds }
--   alias_kinds non-empty: the ids are any ids a customer is known by, resolved here to the canonical person exactly as
--   RedisFeatureStore.resolve does (a person hash of that id; else an alias P:id:{kind:id}; else the anonymous person
--   kind:id), saving the service a round trip; empty: the ids are person ids already
--   keys are built from the prefix as features/offer_store.py names them (like ingest.lua does): per person the
--   hash P:c:{person}:p, affinities :ia and :ca, purchases :b, the contact ledger :ol and its state :os; one
--   person's keys share a hash tag, a batch spans slots (one Redis node; a cluster reads per slot)
--   ledger_since: a ZRANGEBYSCORE min such as "(1700000000.5"; top_items, top_categories: how many of the
--   strongest affinities to read (ZREVRANGE; affinity sets are small listpacks, where ZMSCORE of many members costs
--   a scan per member); owned: the items eligibility rules mention (their last purchase times, ZMSCORE).
-- Returns one msgpack string: {catalog version, {person, hash, top items, top categories, purchase times, ledger,
-- state},
-- ...} with each reply as Redis gives it (flat arrays of strings; false where an owned item was not bought). One
-- string instead of nested replies: cheaper for Redis to send and for the client to decode.

local args = cmsgpack.unpack(ARGV[1])
local prefix, persons, since, n_items, n_cats, owned, kinds = args[1], args[2], args[3], args[4], args[5], args[6], args[7]

local function resolve(id)
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

local function scores(key, members)
  if #members == 0 then
    return {}
  end
  return redis.call("ZMSCORE", key, unpack(members))
end

local out = {redis.call("GET", prefix .. ":o:catalog:v") or "0"}
for _, id in ipairs(persons) do
  local person = id
  if #kinds > 0 then
    person = resolve(id)
  end
  local base = prefix .. ":c:{" .. person .. "}:"
  out[#out + 1] = {
    person,
    redis.call("HGETALL", base .. "p"),
    redis.call("ZREVRANGE", base .. "ia", 0, n_items - 1, "WITHSCORES"),
    redis.call("ZREVRANGE", base .. "ca", 0, n_cats - 1, "WITHSCORES"),
    scores(base .. "b", owned),
    redis.call("ZRANGEBYSCORE", base .. "ol", since, "+inf", "WITHSCORES"),
    redis.call("HGETALL", base .. "os"),
  }
end
return cmsgpack.pack(out)
