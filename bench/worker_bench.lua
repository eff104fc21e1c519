-- bench/worker_bench.lua: spawn+join through the Lua API next to the plain-C
-- floor (bench/worker_floor.c).  The machine is shared and noisy, so the two
-- run in alternating rounds and the report gives the median of the per-round
-- ratios with their range.  Run by `make bench` (bench/run sets the paths
-- and PT_BENCH_BIN).
local pt = require "procthread"
local N = tonumber(os.getenv("PT_BENCH_N") or "400")        -- spawns per round
local ROUNDS = tonumber(os.getenv("PT_BENCH_ROUNDS") or "7")
local bin = assert(os.getenv("PT_BENCH_BIN"), "PT_BENCH_BIN: folder of the floor binaries")

local function median(v)
  local t = {}
  for i = 1, #v do t[i] = v[i] end
  table.sort(t)
  return t[math.floor(#t / 2) + 1], t[1], t[#t]
end

local function measure(kind, n)
  local f = function() end
  local t = {}
  for i = 1, n do
    local t0 = pt.now()
    assert(pt.spawn(kind, f):join(10))
    t[i] = pt.now() - t0
  end
  return (median(t)) * 1e6
end

local function floor(n)
  local r = {}
  local p = assert(io.popen(bin .. "/worker_floor " .. n))
  for k, v in p:read("*a"):gmatch("(%w+)_us ([%d.]+)") do r[k] = tonumber(v) end
  p:close()
  return r
end

measure("thread", 50); measure("process", 50)              -- warm-up
local res = { thread = { c = {}, l = {}, r = {} }, process = { c = {}, l = {}, r = {} } }
for round = 1, ROUNDS do
  local fl = floor(N)
  for _, kind in ipairs { "thread", "process" } do
    local l = measure(kind, N)
    local s = res[kind]
    s.c[round], s.l[round], s.r[round] = fl[kind], l, l / fl[kind]
  end
end
print(("spawn + join, %d rounds of %d (medians)    C floor  procthread   ratio (range)"):format(ROUNDS, N))
for _, kind in ipairs { "thread", "process" } do
  local s = res[kind]
  local r, lo, hi = median(s.r)
  print(("%-40s %7.1f us %8.1f us   %.2fx (%.2f-%.2f)"):format(
    kind == "thread" and "thread (fresh Lua state)" or "process (fork, _exit, wait)",
    (median(s.c)), (median(s.l)), r, lo, hi))
end
