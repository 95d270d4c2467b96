-- recsvc live read: the slice of a profile that a decision needs, in one round trip and with few numbers formatted.
-- Read-only. Key names follow features/keys.py; resolution as in profile.lua.
--
-- ARGV[1] prefix, ARGV[2] the id asked for, ARGV[3] since (epoch seconds: purchases at or after it come with their
-- time), ARGV[4] recent events scanned for the session's items, ARGV[5] category affinities, ARGV[6] now and
-- ARGV[7] the session timeout (seconds): the recent events come only while the session is open
-- Returns {person, p (flat: country, orders, n and t:* traits of the person hash), b (every purchased item, most
-- recent first, joined by "\n": one string instead of hundreds), b_since (flat, with times), rt (returned items,
-- joined by "\n"), cart (item ids), s (flat: id, started, last), r (LRANGE, or empty), ca (flat, with scores)};
-- {""} for nobody. Item ids never hold whitespace (features.schema.ID_PATTERN), so "\n" cannot occur in one.

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
-- of the person hash only the fields a decision reads; the session: fields s:id, s:started, s:last of the person
-- hash, returned as a hash of id, started, last
local p, session, last = {}, {}, nil
for i = 1, #h, 2 do
  local f = h[i]
  if f == "country" or f == "orders" or f == "n" or string.sub(f, 1, 2) == "t:" then
    p[#p + 1] = f
    p[#p + 1] = h[i + 1]
  elseif f == "s:id" or f == "s:started" or f == "s:last" then
    session[#session + 1] = string.sub(f, 3)
    session[#session + 1] = h[i + 1]
    if f == "s:last" then last = tonumber(h[i + 1]) end
  end
end
local recent = {}
if last and tonumber(ARGV[6]) - last <= tonumber(ARGV[7]) then
  recent = redis.call("LRANGE", pkey(person, "r"), 0, tonumber(ARGV[4]) - 1)
end
return {
  person,
  p,
  table.concat(redis.call("ZREVRANGE", pkey(person, "b"), 0, -1), "\n"),
  redis.call("ZREVRANGEBYSCORE", pkey(person, "b"), "+inf", ARGV[3], "WITHSCORES"),
  table.concat(redis.call("ZRANGE", pkey(person, "rt"), 0, -1), "\n"),
  redis.call("HKEYS", pkey(person, "cart")),
  session,
  recent,
  redis.call("ZREVRANGE", pkey(person, "ca"), 0, tonumber(ARGV[5]) - 1, "WITHSCORES"),
}
