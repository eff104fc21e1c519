-- bench/worker_bench.lua: spawn+join through the Lua API next to the plain-C
-- floor (bench/worker_floor.c), in the same run, as medians and ratios.
-- Run by `make bench` (bench/run sets the paths and PT_BENCH_BIN).
local pt = require "procthread"
local N = tonumber(os.getenv("PT_BENCH_N") or "2000")
local bin = assert(os.getenv("PT_BENCH_BIN"), "PT_BENCH_BIN: folder of the floor binaries")

local function median(v)
  table.sort(v)
  return v[math.floor(#v / 2) + 1]
end

local function measure(kind)
  local f = function() end
  for _ = 1, math.floor(N / 10) do assert(pt.spawn(kind, f):join(10)) end
  local t = {}
  for i = 1, N do
    local t0 = pt.now()
    local w = pt.spawn(kind, f)
    w:join(10)
    t[i] = pt.now() - t0
  end
  return median(t) * 1e6
end

local floor = {}
local p = assert(io.popen(bin .. "/worker_floor " .. N))
for k, v in p:read("*a"):gmatch("(%w+)_us ([%d.]+)") do floor[k] = tonumber(v) end
p:close()
local th, pr = measure("thread"), measure("process")
print(("%-28s %10s %10s %8s"):format("spawn + join (median)", "C floor", "procthread", "ratio"))
print(("%-28s %8.1f us %8.1f us %7.2fx"):format("thread (fresh Lua state)", floor.thread, th, th / floor.thread))
print(("%-28s %8.1f us %8.1f us %7.2fx"):format("process (fork, _exit, wait)", floor.process, pr, pr / floor.process))
