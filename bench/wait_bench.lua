-- bench/wait_bench.lua: pt.wait against the plain-C floor
-- (bench/wait_floor.c), in alternating rounds.
--
--   lua5.4 bench/wait_bench.lua [build/5.4 [BEFORE]]
--
-- Wake-up latency: a ping-pong through two keys of a shared table (each
-- side writes its key, then pt.wait's for the other's to move), thread to
-- thread and process to process, beside two threads / processes passing a
-- turn through two futex words.  Target (issue 11): within 1.5x the floor.
-- The same ping-pong through two semaphores (acquire/release), beside the
-- same floor.
-- A write with no waiter must cost nothing measurable: pt.add and
-- `st.x = i` rates of this build, and, when BEFORE names the build folder
-- of a procthread without pt.wait (e.g. the parent commit's), of that build
-- too, alternating; the ratio is the median of 9 pairs' ratios.  Target:
-- ratio >= 0.97 (noise).
package.path = "bench/?.lua;" .. package.path
local B = require "benchlib"
local mode = arg[2]

if mode == "--pingpong" then         -- [build] --pingpong kind n
  local pt = require "procthread"
  local kind, n = arg[3], tonumber(arg[4])
  local st = pt.shared_table({ a = 0, b = 0 })
  local w = pt.spawn(kind, function(s, k)
    local wait = pt.wait
    for i = 1, k + 1 do
      wait(s, "a", i - 1)
      s.b = i
    end
    return true
  end, st, n)
  st.a = 1; pt.wait(st, "b", 0)        -- the worker runs
  local wait = pt.wait
  local t0 = pt.now()
  for i = 2, n + 1 do
    st.a = i
    wait(st, "b", i - 1)
  end
  print(("rtt_us %.3f"):format((pt.now() - t0) / n * 1e6))
  assert(w:join(60))
  return
elseif mode == "--sem" then          -- [build] --sem kind n: two semaphores
  local pt = require "procthread"
  local kind, n = arg[3], tonumber(arg[4])
  local a, b = pt.semaphore(0), pt.semaphore(0)
  local w = pt.spawn(kind, function(x, y, k)
    for _ = 1, k do x:acquire(); y:release() end
    return true
  end, a, b, n)
  local t0 = pt.now()
  for _ = 1, n do a:release(); b:acquire() end
  print(("rtt_us %.3f"):format((pt.now() - t0) / n * 1e6))
  assert(w:join(60))
  return
elseif mode == "--writes" then       -- [build] --writes add|set n
  local pt = require "procthread"
  local what, n = arg[3], tonumber(arg[4])
  local st = pt.shared_table({ c = 0 })
  local t0 = pt.now()
  if what == "add" then
    local add = pt.add
    for _ = 1, n do add(st, "c", 1) end
  else
    for i = 1, n do st.c = i end
  end
  print(("ops_per_s %.0f"):format(n / (pt.now() - t0)))
  return
end

local floor = B.build .. "/bench/wait_floor"
local T = "timeout 120 "
local function me(build, args)
  local env = ("LUA_CPATH=%q LUA_PATH=%q "):format(build .. "/?.so;;", "lua/?.lua;lua/?/init.lua;;")
  return env .. T .. B.lua .. " bench/wait_bench.lua " .. build .. " " .. args
end
local R = 5

local function alternate(f1, f2)
  local a, b = {}, {}
  for i = 1, R do a[i] = f1(); b[i] = f2() end
  table.sort(a); table.sort(b)
  return a[math.floor((R + 1) / 2)], b[math.floor((R + 1) / 2)]
end

local rows = {}
for _, kind in ipairs({ "thread", "process" }) do
  local a, b = alternate(function() return B.run(me(B.build, "--pingpong " .. kind .. " 50000"), "rtt_us") end,
                         function() return B.run(T .. floor .. " pingpong " .. kind .. " 200000", "rtt_us") end)
  rows[#rows + 1] = ("%-44s %10.2fus %10.2fus  ratio %6.3f  target <= 1.5"):format(
    "pt.wait ping-pong " .. kind .. "->" .. kind .. " vs C futex", a, b, a / b)
  a, b = alternate(function() return B.run(me(B.build, "--sem " .. kind .. " 50000"), "rtt_us") end,
                   function() return B.run(T .. floor .. " pingpong " .. kind .. " 200000", "rtt_us") end)
  rows[#rows + 1] = ("%-44s %10.2fus %10.2fus  ratio %6.3f"):format(
    "semaphore ping-pong " .. kind .. " vs C futex", a, b, a / b)
end
local before = arg[2]
for _, what in ipairs({ "add", "set" }) do
  local cmd = "--writes " .. what .. " 3000000"
  if before then                     -- the median of 9 pairs' ratios: the noise is large
    local a, b, q = {}, {}, {}
    for i = 1, 9 do
      a[i] = B.run(me(B.build, cmd), "ops_per_s")
      b[i] = B.run(me(before, cmd), "ops_per_s")
      q[i] = a[i] / b[i]
    end
    local function med(t) table.sort(t); return t[5] end
    rows[#rows + 1] = ("%-44s %10.2fM  %10.2fM   ratio %6.3f  target >= 0.97"):format(
      (what == "add" and "pt.add" or "st.c = i") .. ", no waiter, vs before pt.wait",
      med(a) / 1e6, med(b) / 1e6, med(q))
  else
    rows[#rows + 1] = ("%-44s %10.2fM  (no BEFORE build given)"):format(
      (what == "add" and "pt.add" or "st.c = i") .. ", no waiter", B.median(function()
        return B.run(me(B.build, cmd), "ops_per_s") end, R) / 1e6)
  end
end
print(("%-44s %12s %12s"):format("measure", "procthread", "floor"))
for _, r in ipairs(rows) do print(r) end
