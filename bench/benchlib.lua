-- bench/benchlib.lua: what the benchmarks that run a C floor and themselves
-- as child commands share.  arg[1] is the build folder (default: the one of
-- $PT_BENCH_BIN, else build/5.4); arg[-1] the Lua running the script.
local B = {}

local bin = os.getenv("PT_BENCH_BIN")
B.build = arg[1] or (bin and bin:gsub("/bench$", "")) or "build/5.4"
B.lua = arg[-1] or "lua5.4"
B.env = ("LUA_CPATH=%q LUA_PATH=%q "):format(B.build .. "/?.so;;", "lua/?.lua;lua/?/init.lua;;")

-- Run a command; return the number it prints after `key` ("key 1.5" or "key=1.5").
function B.run(cmd, key)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("*a"); p:close()
  local v = tonumber(out:match(key .. "=?%s*([%d%.]+)"))
  if not v then error("benchmark failed: " .. cmd .. "\n" .. out) end
  return v
end

-- The median of k calls of f.
function B.median(f, k)
  local t = {}
  for i = 1, k do t[i] = f() end
  table.sort(t)
  return t[math.floor((k + 1) / 2)]
end

return B
