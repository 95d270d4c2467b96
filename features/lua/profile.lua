-- recsvc profile read: resolve any id to its person and return every part of the live profile, in one round trip.
-- Read-only (EVALSHA_RO-safe). Key names follow features/keys.py.
--
-- ARGV[1] prefix, ARGV[2] the id asked for, ARGV[3] recent events to return, ARGV[4] item affinities,
-- ARGV[5] category affinities, ARGV[6] purchased/returned items (most recent first)
-- Returns {person, p (flat HGETALL), r (LRANGE), ia, ca, b, rt (flat ZREVRANGE WITHSCORES), cart,
-- s (flat: id, started, last, from the person hash's s:* fields), ids (SMEMBERS)}; person is "" when nothing is known.
-- Scores stay strings (Lua would truncate them to integers).
--
-- Resolution, as RedisFeatureStore.resolve: an id qualified by an alias kind ("anonymous:abc", "device:d1",
-- "email:h"; customer ids cannot start so) is the person that alias points to, else the anonymous person of that name.
-- A bare id is a person (customer) of that name; else the person an anonymous/device/email alias of that value points
-- to; else an anonymous person of that name ("anonymous:abc"); else nobody.

local P, id = ARGV[1], ARGV[2]
local function pkey(person, part) return P .. ":c:{" .. person .. "}:" .. part end

local KINDS = {"anonymous", "device", "email"}
local person, qualified = nil, false
for _, kind in ipairs(KINDS) do
  if string.sub(id, 1, #kind + 1) == kind .. ":" then qualified = true; break end
end
if qualified then  -- "anonymous:abc": that alias's person, else the anonymous person of that name; never a customer
  person = redis.call("GET", P .. ":id:{" .. id .. "}") or id
else
  if redis.call("EXISTS", pkey(id, "p")) == 1 then person = id end
  if not person then
    for _, kind in ipairs(KINDS) do
      local owner = redis.call("GET", P .. ":id:{" .. kind .. ":" .. id .. "}")
      if owner then person = owner; break end
    end
  end
  if not person then
    for _, kind in ipairs(KINDS) do
      if redis.call("EXISTS", pkey(kind .. ":" .. id, "p")) == 1 then person = kind .. ":" .. id; break end
    end
  end
end
if not person then return {""} end
local h = redis.call("HGETALL", pkey(person, "p"))
if #h == 0 then return {""} end
-- the session: fields s:id, s:started, s:last of the person hash, returned as a hash of id, started, last
local session = {}
for i = 1, #h, 2 do
  local f = h[i]
  if f == "s:id" or f == "s:started" or f == "s:last" then
    session[#session + 1] = string.sub(f, 3)
    session[#session + 1] = h[i + 1]
  end
end
local n = tonumber(ARGV[6]) - 1
return {
  person,
  h,
  redis.call("LRANGE", pkey(person, "r"), 0, tonumber(ARGV[3]) - 1),
  redis.call("ZREVRANGE", pkey(person, "ia"), 0, tonumber(ARGV[4]) - 1, "WITHSCORES"),
  redis.call("ZREVRANGE", pkey(person, "ca"), 0, tonumber(ARGV[5]) - 1, "WITHSCORES"),
  redis.call("ZREVRANGE", pkey(person, "b"), 0, n, "WITHSCORES"),
  redis.call("ZREVRANGE", pkey(person, "rt"), 0, n, "WITHSCORES"),
  redis.call("HGETALL", pkey(person, "cart")),
  session,
  redis.call("SMEMBERS", pkey(person, "ids")),
}
