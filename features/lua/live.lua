-- recsvc live read: the slice of a profile that a decision needs, in one round trip and with few numbers formatted.
-- Read-only. Key names follow features/keys.py; resolution as in profile.lua.
--
-- ARGV[1] prefix, ARGV[2] the id asked for, ARGV[3] since (epoch seconds: purchases at or after it come with their
-- time), ARGV[4] recent events scanned for the session's items, ARGV[5] category affinities
-- Returns {person, p (flat HGETALL), b (every purchased item, most recent first), b_since (flat, with times),
-- rt (returned items), cart (item ids), s (flat HGETALL), r (LRANGE), ca (flat, with scores)}; {""} for nobody.

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
return {
  person,
  h,
  redis.call("ZREVRANGE", pkey(person, "b"), 0, -1),
  redis.call("ZREVRANGEBYSCORE", pkey(person, "b"), "+inf", ARGV[3], "WITHSCORES"),
  redis.call("ZRANGE", pkey(person, "rt"), 0, -1),
  redis.call("HKEYS", pkey(person, "cart")),
  redis.call("HGETALL", pkey(person, "s")),
  redis.call("LRANGE", pkey(person, "r"), 0, tonumber(ARGV[4]) - 1),
  redis.call("ZREVRANGE", pkey(person, "ca"), 0, tonumber(ARGV[5]) - 1, "WITHSCORES"),
}
