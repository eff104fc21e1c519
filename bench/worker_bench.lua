-- bench/worker_bench.lua: spawn + join through the Lua API next to the
-- plain-C floor (bench/worker_floor.c, built as build/<v>/bench/worker_floor).
--
--   lua5.4 bench/worker_bench.lua [build/5.4]
--   PT_BENCH_OLD=/tmp/old/build/5.4 lua5.4 bench/worker_bench.lua
--
-- The machine is shared and noisy, so the floor and procthread run as
-- child commands in alternating rounds, and the report gives the median of
-- the per-round ratios with their range.  With PT_BENCH_OLD (another build
-- folder: an older tree) that build runs in the same rounds too, its order
-- against this one swapped every round.  Also printed: the parent's minor
-- page faults per process spawn (copy-on-write after the fork).
-- Targets (issue 12): thread <= 0.8x the floor (pthread_create + join of a
-- fresh Lua state), process <= 1.25x (fork + _exit + waitpid).
local mode = arg[1]

if mode == "--measure" then
  local pt = require "procthread"
  local n = tonumber(arg[2])
  local f = function() end
  local function measure(kind, k)
    local t = {}
    local flt0 = pt.rusage().minflt
    for i = 1, k do
      local t0 = pt.now()
      assert(pt.spawn(kind, f):join(10))
      t[i] = pt.now() - t0
    end
    local flt = (pt.rusage().minflt - flt0) / k
    table.sort(t)
    return t[math.floor(k / 2) + 1] * 1e6, flt
  end
  measure("thread", 50); measure("process", 50)              -- warm-up
  local th = measure("thread", n)
  local pr, flt = measure("process", n)
  print(("thread_us %.2f process_us %.2f minflt %.1f"):format(th, pr, flt))
  os.exit(0)
end

package.path = "bench/?.lua;" .. package.path
local B = require "benchlib"
local N = tonumber(os.getenv("PT_BENCH_N") or "400")        -- spawns per round
local ROUNDS = tonumber(os.getenv("PT_BENCH_ROUNDS") or "7")
local old = os.getenv("PT_BENCH_OLD")

local function env_of(build)
  return ("LUA_CPATH=%q LUA_PATH=%q "):format(build .. "/?.so;;", "lua/?.lua;lua/?/init.lua;;")
end

local function numbers(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("*a"); p:close()
  local r = {}
  for k, v in out:gmatch("(%a+)_?%a* ([%d.]+)") do r[k] = tonumber(v) end
  if not r.thread then error("benchmark failed: " .. cmd .. "\n" .. out) end
  return r
end

local function median(v)
  local t = {}
  for i = 1, #v do t[i] = v[i] end
  table.sort(t)
  return t[math.floor(#t / 2) + 1], t[1], t[#t]
end

local runs = { { name = "procthread", cmd = env_of(B.build) .. B.lua .. " " .. arg[0] .. " --measure " .. N } }
if old then
  runs[2] = { name = "before", cmd = env_of(old) .. B.lua .. " " .. arg[0] .. " --measure " .. N }
end
local floor_cmd = B.build .. "/bench/worker_floor " .. N
local res = { floor = {} }
for _, r in ipairs(runs) do res[r.name] = {} end

for round = 1, ROUNDS do
  res.floor[round] = numbers(floor_cmd)
  local order = { 1, 2 }
  if round % 2 == 0 then order = { 2, 1 } end
  for _, i in ipairs(order) do
    local r = runs[i]
    if r then res[r.name][round] = numbers(r.cmd) end
  end
end

local function column(name, key)
  local v = {}
  for round = 1, ROUNDS do v[round] = res[name][round][key] end
  return v
end

local function ratios(name, key)
  local v = {}
  for round = 1, ROUNDS do v[round] = res[name][round][key] / res.floor[round][key] end
  return v
end

print(("spawn + join (%s), %d rounds of %d, medians"):format(B.lua, ROUNDS, N))
print(("%-30s %-11s %9s %9s   %s"):format("kind", "build", "C floor", "us", "ratio (range)  target"))
local targets = { thread = 0.8, process = 1.25 }
for _, kind in ipairs { "thread", "process" } do
  for _, r in ipairs(runs) do
    local q, lo, hi = median(ratios(r.name, kind))
    print(("%-30s %-11s %9.1f %9.1f   %.2fx (%.2f-%.2f)  <= %.2f"):format(
      kind == "thread" and "thread (fresh Lua state)" or "process (fork, _exit, wait)",
      r.name, (median(column("floor", kind))), (median(column(r.name, kind))), q, lo, hi,
      targets[kind]))
  end
end
for _, r in ipairs(runs) do
  print(("%-30s %-11s %9.1f %9.1f   (minor faults per process spawn, parent)"):format(
    "copy-on-write faults", r.name, (median(column("floor", "minflt"))),
    (median(column(r.name, "minflt")))))
end
