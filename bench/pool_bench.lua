-- bench/pool_bench.lua: pools against the issue-12 targets, beside the C
-- floor measured in the same rounds:
--
--   lua5.4 bench/pool_bench.lua [build/5.4]
--   PT_BENCH_OLD=/tmp/old/build/5.4 lua5.4 bench/pool_bench.lua
--
-- Rows (2 workers, a trivial function x -> x + 1):
--   one task at a time  submit + get, one future in flight; against a C
--                       mutex/condvar round trip between two threads
--                       (bench/pool_floor.c); target 1.2x (luaproc 8.8 us)
--   pool:map            ITEMS items in chunks (the pool's default); target
--                       8 M tasks/s; the pool is started and warm (its start
--                       is its own row)
--   submit all, get all ITEMS_SUBMIT futures in flight at once
--   spawn + join        a worker per item, 2 in flight (SPAWN_T threads or
--                       SPAWN_P processes): what a pool saves
--   pool start          pt.pool(kind, 2) and its first answer
--   plain loop          the same function over ITEMS items here, for scale
--
-- The machine is shared and noisy, so every round runs each build (this
-- one; with PT_BENCH_OLD, that build folder of an older tree too, with its
-- own lua/ folder) as a child command, the builds' order swapped every
-- round and the kinds' order inside a child too.  Inside a child the one-
-- at-a-time tasks run in SLICES slices, each right after a slice of the C
-- floor (a run of bench/pool_floor), so that each ratio compares figures
-- taken milliseconds apart; the child reports the median slice.  Each row
-- prints the median over the rounds with the range (min-max); a ratio is
-- the median of the rounds' ratios.  The load average before and after is
-- printed: figures taken under load say little.
-- Environment: PT_BENCH_ROUNDS (7), POOL_BENCH_ITEMS (100000),
-- POOL_BENCH_ONE (20000 tasks one at a time, per kind and round), POOL_BENCH_SUBMIT (20000),
-- POOL_BENCH_SPAWN_T (400), POOL_BENCH_SPAWN_P (100).
local N = 2
local ITEMS = tonumber(os.getenv("POOL_BENCH_ITEMS")) or 100000
local ONE = tonumber(os.getenv("POOL_BENCH_ONE")) or 20000
local SUBMIT = tonumber(os.getenv("POOL_BENCH_SUBMIT")) or 20000
local SPAWN = { thread = tonumber(os.getenv("POOL_BENCH_SPAWN_T")) or 400,
                process = tonumber(os.getenv("POOL_BENCH_SPAWN_P")) or 100 }
local MAPS = 15               -- maps per child; the child reports their median
local SLICES = 10             -- one-at-a-time slices per child, each beside a floor slice
local SLICE = math.max(1, math.floor(ONE / SLICES))

package.path = "bench/?.lua;" .. package.path
local B = require "benchlib"

local function trivial(x) return x + 1 end

-- ---- a child: one round of one build, figures as "key value" lines -------

local function measure(round, floor)
  local pt = require "procthread"
  local function floor_us(n)
    local p = assert(io.popen(("%s condvar %d 2>&1"):format(floor, n)))
    local out = p:read("*a"); p:close()
    return assert(tonumber(out:match("rtt_us ([%d.]+)")), "pool_floor failed: " .. out)
  end
  local floors = {}
  local list = {}
  for i = 1, ITEMS do list[i] = i end
  local r = {}
  local v = {}
  for k = 1, MAPS do
    local out, t0 = {}, pt.now()
    for i = 1, ITEMS do out[i] = trivial(list[i]) end
    v[k] = ITEMS / (pt.now() - t0)
  end
  r.plain = B.spread(v)
  local kinds = round % 2 == 1 and { "thread", "process" } or { "process", "thread" }
  for _, kind in ipairs(kinds) do
    local t0 = pt.now()
    local pool = pt.pool(kind, N)
    assert(pool:submit(trivial, 0):get(60))
    r[kind .. "_start"] = pt.now() - t0
    for i = 1, 1000 do pool:submit(trivial, i):get() end           -- warm up
    pool:map(trivial, list)
    -- slices of the floor and of the pool, alternating: each ratio pairs
    -- figures taken a few milliseconds apart
    local us, ratios = {}, {}
    for s = 1, SLICES do
      local fl = floor_us(SLICE)
      floors[#floors + 1] = fl
      t0 = pt.now()
      for i = 1, SLICE do pool:submit(trivial, i):get() end
      us[s] = (pt.now() - t0) / SLICE * 1e6
      ratios[s] = us[s] / fl
    end
    r[kind .. "_one"], r[kind .. "_ratio"] = B.spread(us), B.spread(ratios)
    for k = 1, MAPS do
      t0 = pt.now()
      local out = pool:map(trivial, list)
      v[k] = ITEMS / (pt.now() - t0)
      assert(#out == ITEMS and out[ITEMS] == ITEMS + 1, "pool:map gave a wrong result")
    end
    r[kind .. "_map"] = B.spread(v)
    local fs = {}
    t0 = pt.now()
    for i = 1, SUBMIT do fs[i] = pool:submit(trivial, i) end
    for i = 1, SUBMIT do
      local ok, x = fs[i]:get(60)
      assert(ok == true and x == i + 1, "submit/get gave a wrong result")
    end
    r[kind .. "_many"] = SUBMIT / (pt.now() - t0)
    assert(pool:close(30))
    local ws = {}
    t0 = pt.now()
    for i = 1, SPAWN[kind] do
      if #ws == N then assert(table.remove(ws, 1):join(60)) end
      ws[#ws + 1] = pt.spawn(kind, trivial, i)
    end
    for _, w in ipairs(ws) do assert(w:join(60)) end
    r[kind .. "_spawn"] = SPAWN[kind] / (pt.now() - t0)
  end
  r.floor = B.spread(floors)
  for k, x in pairs(r) do print(k, ("%.9g"):format(x)) end
end

if arg[1] == "--measure" then
  measure(tonumber(arg[2]), arg[3])
  os.exit(0)
end

-- ---- the parent: rounds, then the table ------------------------------------

local ROUNDS = tonumber(os.getenv("PT_BENCH_ROUNDS")) or 7
local old = B.old
local FLOOR = B.build .. "/bench/pool_floor"

-- A build folder's command: its tree's lua/ (build/<v> inside a tree), or ours.
local function cmd_of(build)
  local root = build:match("^(.*)/build/[^/]+/?$") or "."
  return ("LUA_CPATH=%q LUA_PATH=%q %s %s --measure "):format(build .. "/?.so;;",
    root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;;", B.lua, arg[0])
end

local function loadavg()
  local f = io.open("/proc/loadavg")
  local s = f and f:read("*l") or "?"
  if f then f:close() end
  return s:match("^(%S+ %S+ %S+)") or s
end

local builds = { { name = "procthread", cmd = cmd_of(B.build) } }
if old then builds[2] = { name = "before", cmd = cmd_of(old) } end
local res = {}
for _, b in ipairs(builds) do res[b.name] = {} end
local load0 = loadavg()
for round = 1, ROUNDS do
  for k = 1, #builds do
    local b = builds[round % 2 == 1 and k or #builds + 1 - k]
    res[b.name][round] = B.figures(("%s%d %q"):format(b.cmd, round, FLOOR), { "plain" })
  end
end

local function column(name, key, scale)
  local v = {}
  for round = 1, ROUNDS do v[round] = res[name][round][key] * (scale or 1) end
  return v
end

local lua = type(jit) == "table" and jit.version or _VERSION
print(("pool_bench: %s, %d workers, x -> x + 1, %d rounds (builds alternating); load average %s -> %s")
  :format(lua, N, ROUNDS, load0, loadavg()))
print("each row: the median over the rounds (min-max); ratios: the median of the rounds' ratios")
local function row(what, build, unit, v, note)
  local m, lo, hi = B.spread(v)
  print(("%-44s %-10s %8.2f %-4s (%.2f-%.2f)%s"):format(what, build, m, unit, lo, hi, note or ""))
end
local function ratio(v, target)
  local m, lo, hi = B.spread(v)
  return ("  %.2fx (%.2f-%.2f), target %s"):format(m, lo, hi, target)
end
for _, b in ipairs(builds) do
  row("C condvar round trip (floor)", b.name, "us", column(b.name, "floor"))
end
for _, kind in ipairs { "thread", "process" } do
  for _, b in ipairs(builds) do
    row(kind .. " one task at a time (submit + get)", b.name, "us", column(b.name, kind .. "_one"),
      ratio(column(b.name, kind .. "_ratio"), "<= 1.2x the floor (luaproc 8.8 us)"))
  end
end
for _, kind in ipairs { "thread", "process" } do
  for _, b in ipairs(builds) do
    row(("%s pool:map, %d items, warm pool"):format(kind, ITEMS), b.name, "M/s", column(b.name, kind .. "_map", 1e-6),
      ratio(column(b.name, kind .. "_map", 1 / 8e6), ">= 1x 8 M tasks/s"))
  end
end
for _, b in ipairs(builds) do
  row(("plain loop here, %d items (for scale)"):format(ITEMS), b.name, "M/s", column(b.name, "plain", 1e-6))
end
local tail = {
  { "%s submit " .. SUBMIT .. ", then get each", "_many", "k/s", 1e-3 },
  { "%s spawn + join per item, " .. N .. " in flight", "_spawn", "k/s", 1e-3 },
  { "%s pool start (pt.pool + first answer)", "_start", "ms", 1e3 },
}
for _, kind in ipairs { "thread", "process" } do
  for _, t in ipairs(tail) do
    for _, b in ipairs(builds) do row(t[1]:format(kind), b.name, t[3], column(b.name, kind .. t[2], t[4])) end
  end
end
