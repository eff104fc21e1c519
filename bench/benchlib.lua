-- bench/benchlib.lua: what the benchmarks that run a C floor and themselves
-- as child commands share.  arg[1] is the build folder (default: the one of
-- $PT_BENCH_BIN, else build/5.4); arg[-1] the Lua running the script.
local B = {}

local bin = os.getenv("PT_BENCH_BIN")
local a1 = arg[1] and not arg[1]:match("^%-%-") and arg[1]   -- a child's "--measure": no folder
B.build = a1 or (bin and bin:gsub("/bench$", "")) or "build/5.4"
B.lua = arg[-1] or "lua5.4"
-- PT_BENCH_OLD: the build folder of an older tree, measured in the same
-- rounds (B.alternate) where a bench supports it.
B.old = os.getenv("PT_BENCH_OLD")

-- The environment that makes a child Lua load the build folder `build`.
function B.env_of(build)
  return ("LUA_CPATH=%q LUA_PATH=%q "):format(build .. "/?.so;;", "lua/?.lua;lua/?/init.lua;;")
end
B.env = B.env_of(B.build)

-- Run a command; return the number it prints after `key` ("key 1.5" or "key=1.5").
function B.run(cmd, key)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("*a"); p:close()
  local v = tonumber(out:match(key .. "=?%s*([%d%.]+)"))
  if not v then error("benchmark failed: " .. cmd .. "\n" .. out) end
  return v
end

-- The median of the numbers in t (a sorted copy's middle).
function B.mid(t)
  local c = {}
  for i = 1, #t do c[i] = t[i] end
  table.sort(c)
  return c[math.floor((#c + 1) / 2)]
end

-- The median of v (of an even count, the upper middle), its least and its
-- greatest.
function B.spread(v)
  local t = {}
  for i = 1, #v do t[i] = v[i] end
  table.sort(t)
  return t[math.floor(#t / 2) + 1], t[1], t[#t]
end

-- Run a child command; the figures it prints as "key value" pairs
-- (spaces, tabs or newlines between), by key.  It failed unless one of
-- the keys in `need` is there.
function B.figures(cmd, need)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("*a"); p:close()
  local r = {}
  for k, v in out:gmatch("([%a_][%w_]*)%s+(%S+)") do r[k] = tonumber(v) end
  for _, k in ipairs(need) do if r[k] then return r end end
  error("benchmark failed: " .. cmd .. "\n" .. out)
end

-- The median of k calls of f.
function B.median(f, k)
  local t = {}
  for i = 1, k do t[i] = f() end
  return B.mid(t)
end

-- `rounds` (default 5) rounds of the functions in fs, each returning one
-- figure; every round runs them all, starting one further each round, so
-- the machine's mood falls on all alike.  Returns the median figure of
-- each (in fs's order) and, for each i > 1, the median over the rounds of
-- fs[1]'s figure / fs[i]'s (the ratio of the same round: less noisy than
-- the ratio of the medians).
function B.alternate(fs, rounds)
  local got, med, ratio = {}, {}, {}
  for i = 1, #fs do got[i] = {} end
  for r = 1, rounds or 5 do
    for k = 0, #fs - 1 do
      local i = (r + k - 1) % #fs + 1
      got[i][r] = fs[i]()
    end
  end
  for i = 1, #fs do
    med[i] = B.mid(got[i])
    local q = {}
    for r = 1, #got[1] do q[r] = got[1][r] / got[i][r] end
    ratio[i] = B.mid(q)
  end
  return med, ratio
end

-- Print a line at once (a bench's rows come one by one, not at its end).
function B.say(fmt, ...)
  io.stdout:write(fmt:format(...), "\n")
  io.stdout:flush()
end

return B
