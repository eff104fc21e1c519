-- bench/pool_bench.lua: tasks per second through a pool against spawning a
-- worker per item, for both kinds; and the issue-12 targets beside the C
-- floor measured in the same run (ratios printed):
--
--   one task at a time  submit + get, one future in flight, against a C
--                       mutex/condvar round trip between two threads
--                       (bench/pool_floor.c); target 1.2x (luaproc: 8.8 us)
--   pool:map            a trivial function, 2 workers; target 8 M tasks/s
--
--   pool:map     a trivial function over ITEMS items (the pool sends the
--                list in chunks, a few per worker)
--   submit/get   one future per item, ITEMS_SUBMIT items, all submitted
--                before any get (one task message per item)
--   spawn        a worker per item, `n` in flight at a time, until ITEMS
--                items or BUDGET seconds (whichever first: spawning 100k
--                processes takes minutes); the rate is items / time taken
--
-- Run by bench/run with LUA_PATH/LUA_CPATH set; or
--   LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/5.4/?.so;;' lua5.4 bench/pool_bench.lua
-- Environment: POOL_BENCH_ITEMS (100000), POOL_BENCH_SUBMIT (20000),
-- POOL_BENCH_ONE (20000 tasks one at a time, per round),
-- POOL_BENCH_BUDGET (10 seconds per spawn run), POOL_BENCH_WORKERS (cores).
local pt = require "procthread"

local ITEMS = tonumber(os.getenv("POOL_BENCH_ITEMS")) or 100000
local ITEMS_SUBMIT = tonumber(os.getenv("POOL_BENCH_SUBMIT")) or 20000
local BUDGET = tonumber(os.getenv("POOL_BENCH_BUDGET")) or 10
local N = tonumber(os.getenv("POOL_BENCH_WORKERS")) or math.max(2, pt.cpu_count())

local function trivial(x) return x + 1 end

local list = {}
for i = 1, ITEMS do list[i] = i end

local lua = type(jit) == "table" and jit.version or _VERSION
print(("pool_bench: %s, %d workers, %d cores; a trivial function x -> x + 1"):format(lua, N, pt.cpu_count()))

-- The floor: one task at a time between two C threads through a mutex and
-- two condition variables (bench/pool_floor.c), measured in this run.
package.path = "bench/?.lua;" .. package.path
local B = require "benchlib"
local ONE = tonumber(os.getenv("POOL_BENCH_ONE")) or 20000
local floor_us = B.median(function()
  return B.run(("%s/bench/pool_floor condvar %d"):format(B.build, ONE), "rtt_us")
end, 3)
print(("C condvar round trip (floor)           %8.2f us"):format(floor_us))
for _, kind in ipairs({ "thread", "process" }) do
  local pool = pt.pool(kind, 2)
  for i = 1, 1000 do pool:submit(trivial, i):get() end      -- warm up
  local us = B.median(function()
    local t0 = pt.now()
    for i = 1, ONE do pool:submit(trivial, i):get() end
    return (pt.now() - t0) / ONE * 1e6
  end, 3)
  print(("%-8s one task at a time (submit + get) %8.2f us = %.2fx the floor (target 1.2x; luaproc 8.8 us)")
    :format(kind, us, us / floor_us))
  assert(pool:close(30))
end
local function map_rate(kind)
  local pool = pt.pool(kind, 2)
  pool:map(trivial, list)                                    -- warm up
  local rate = B.median(function()
    local t0 = pt.now()
    local r = pool:map(trivial, list)
    local dt = pt.now() - t0
    assert(#r == ITEMS and r[ITEMS] == ITEMS + 1, "pool:map gave a wrong result")
    return ITEMS / dt
  end, 3)
  assert(pool:close(30))
  return rate
end
local plain = B.median(function()
  local out, t0 = {}, pt.now()
  for i = 1, ITEMS do out[i] = trivial(list[i]) end
  return ITEMS / (pt.now() - t0)
end, 3)
print(("plain loop in this process               %8.2f M items/s (for scale)"):format(plain / 1e6))
for _, kind in ipairs({ "thread", "process" }) do
  local rate = map_rate(kind)
  print(("%-8s pool:map, 2 workers                %8.2f M tasks/s = %.2fx the plain loop (target 8 M/s)")
    :format(kind, rate / 1e6, rate / plain))
end
io.stdout:flush()

local function line(kind, what, n, dt, note)
  print(("%-8s %-28s %7d tasks in %8.3f s = %10.0f tasks/s%s"):format(kind, what, n, dt, n / dt, note or ""))
  io.stdout:flush()
end

local rates = {}

for _, kind in ipairs({ "thread", "process" }) do
  -- pool:map over ITEMS items
  local t0 = pt.now()
  local pool = pt.pool(kind, N)
  local t1 = pt.now()
  local r = pool:map(trivial, list)
  local t2 = pt.now()
  assert(#r == ITEMS and r[ITEMS] == ITEMS + 1, "pool:map gave a wrong result")
  line(kind, "pool:map", ITEMS, t2 - t1, (" (pool start %.3f s)"):format(t1 - t0))
  rates[kind .. " map"] = ITEMS / (t2 - t1)

  -- one future per item
  local fs = {}
  t1 = pt.now()
  for i = 1, ITEMS_SUBMIT do fs[i] = pool:submit(trivial, i) end
  for i = 1, ITEMS_SUBMIT do
    local ok, v = fs[i]:get(60)
    assert(ok == true and v == i + 1, "submit/get gave a wrong result")
  end
  t2 = pt.now()
  line(kind, "pool:submit + future:get", ITEMS_SUBMIT, t2 - t1)
  rates[kind .. " submit"] = ITEMS_SUBMIT / (t2 - t1)
  fs = nil
  assert(pool:close(30))

  -- a worker per item, N in flight
  local inflight, done, i = {}, 0, 0
  t1 = pt.now()
  local stop = t1 + BUDGET
  while done < ITEMS do
    while #inflight < N and i < ITEMS and pt.now() < stop do
      i = i + 1
      inflight[#inflight + 1] = { w = pt.spawn(kind, trivial, i), i = i }
    end
    if #inflight == 0 then break end
    local e = table.remove(inflight, 1)
    local ok, v = e.w:join(60)
    assert(ok == true and v == e.i + 1, "spawn per item gave a wrong result: " .. tostring(v))
    done = done + 1
  end
  t2 = pt.now()
  line(kind, "spawn + join per item", done, t2 - t1,
    done < ITEMS and (" (stopped after the %g s budget)"):format(BUDGET) or "")
  rates[kind .. " spawn"] = done / (t2 - t1)
  collectgarbage()
end

print(("speedup of pool:map over a worker per item: threads %.0fx, processes %.0fx"):format(
  rates["thread map"] / rates["thread spawn"], rates["process map"] / rates["process spawn"]))
