-- bench/codec_bench.lua: the codec's cost per value, pt.encode and
-- pt.decode apart, for the shapes tasks and messages carry.
--
--   lua5.4 bench/codec_bench.lua [build]            ns per value, rounds
--   PT_BENCH_OLD=/tmp/old/build/5.4 lua5.4 bench/codec_bench.lua
--                                    an older build in the same rounds
--   lua5.4 bench/codec_bench.lua [build] callgrind  instructions per value
--                                    (valgrind; load-independent)
--
-- A child run (`case NAME encode|decode N`) times N calls of one case.
-- The callgrind mode counts the instructions inside l_encode / l_decode
-- (--toggle-collect) of that child and divides by calls x values.
package.path = "bench/?.lua;" .. package.path
local B = require "benchlib"

local unpack = table.unpack or unpack

-- Each case: a name, how many values one call carries, and the values.
local function ints(n) local t = {} for i = 1, n do t[i] = i * 7 end return t end
local function floats(n) local t = {} for i = 1, n do t[i] = i + 0.5 end return t end
local function strs(n) local t = {} for i = 1, n do t[i] = "item" .. i end return t end
local function tables(n)
  local t = {}
  for i = 1, n do t[i] = { i, "x", ok = true } end
  return t
end
local CASES = {
  { name = "integers", n = 1000, values = ints },
  { name = "floats", n = 1000, values = floats },
  { name = "short strings", n = 1000, values = strs },
  { name = "4 KiB string", n = 1, values = function() return { ("x"):rep(4096) } end },
  { name = "small tables", n = 100, values = tables },
  { name = "mixed (map chunk)", n = 1000, values = function(n)
      local t = ints(n)
      t[1], t[2] = function(x) return x + 1 end, n
      return t
    end },
}

local function case_of(name)
  for _, c in ipairs(CASES) do if c.name == name then return c end end
  error("no case " .. tostring(name))
end

-- Child: time `calls` calls of one direction of one case.
if arg[1] == "case" then
  local pt = require "procthread"
  local c = case_of(arg[2])
  local vals = c.values(c.n)
  local calls = tonumber(arg[4])
  local s = pt.encode(unpack(vals, 1, c.n))
  local encode, decode = pt.encode, pt.decode
  local t0 = pt.now()
  if arg[3] == "encode" then
    for _ = 1, calls do encode(unpack(vals, 1, c.n)) end
  else
    for _ = 1, calls do decode(s) end
  end
  print(("ns %.3f"):format((pt.now() - t0) * 1e9 / (calls * c.n)))
  return
end

local mode = arg[2]
local script = "bench/codec_bench.lua"
local function calls_of(c) return math.max(200, math.floor(2000000 / c.n)) end

local function timed(build, c, dir)
  return B.run(("%s%s %s case %q %s %d"):format(B.env_of(build), B.lua, script, c.name, dir,
                                                  calls_of(c)), "ns")
end

-- Instructions per value: the child's l_encode or l_decode, inclusive.
local function instr(build, c, dir)
  local calls = math.max(5, math.floor(20000 / c.n))
  local out = os.tmpname()
  local fn = dir == "encode" and "l_encode" or "l_decode"
  os.execute(("%svalgrind --tool=callgrind --callgrind-out-file=%s --toggle-collect=%s "
                .. "%s %s case %q %s %d >/dev/null 2>&1"):format(
    B.env_of(build), out, fn, B.lua, script, c.name, dir, calls))
  local f = assert(io.open(out))
  local text = f:read("*a"); f:close(); os.remove(out)
  local ir = tonumber(text:match("\nsummary:%s*(%d+)") or text:match("\ntotals:%s*(%d+)"))
  -- the first call (the reference encode in the child) is outside the loop
  -- for decode; for encode it is one call more
  local n = dir == "encode" and calls + 1 or calls
  return ir / (n * c.n)
end

local builds = { B.build }
if B.old then builds[2] = B.old end
B.say("%-20s %-7s %12s%s", "case", "dir", "this", B.old and "      old   old/this" or "")
for _, c in ipairs(CASES) do
  for _, dir in ipairs({ "encode", "decode" }) do
    if mode == "callgrind" then
      local a = instr(builds[1], c, dir)
      if builds[2] then
        local b = instr(builds[2], c, dir)
        B.say("%-20s %-7s %9.1f Ir %9.1f Ir %6.2f", c.name, dir, a, b, b / a)
      else
        B.say("%-20s %-7s %9.1f Ir", c.name, dir, a)
      end
    else
      local fs = {}
      for i, b in ipairs(builds) do fs[i] = function() return timed(b, c, dir) end end
      local med, ratio = B.alternate(fs, 5)
      if builds[2] then
        B.say("%-20s %-7s %9.1f ns %9.1f ns %6.2f", c.name, dir, med[1], med[2], 1 / ratio[2])
      else
        B.say("%-20s %-7s %9.1f ns", c.name, dir, med[1])
      end
    end
  end
end
