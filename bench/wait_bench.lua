-- bench/wait_bench.lua: pt.wait against the plain-C floor
-- (bench/wait_floor.c), in alternating rounds.
--
--   lua5.4 bench/wait_bench.lua [build/5.4 [BEFORE]]
--   PT_BENCH_OLD=/tmp/old/build/5.4 lua5.4 bench/wait_bench.lua
--
-- Wake-up latency: a ping-pong through two keys of a shared table (each
-- side writes its key, then pt.wait's for the other's to move), thread to
-- thread and process to process, beside two threads / processes passing a
-- turn through two futex words: two floors, in the same rounds.  "spin":
-- what procthread does too (spin up to 10 us, then sleep; wake only a
-- sleeper), the fair floor, whose ratio is the row's; "sleep": a futex
-- sleep and wake at every turn, beside it.  Target (issue 11, set against
-- the sleep floor): within 1.5x of it.  The same ping-pong through two
-- semaphores (acquire/release), beside the same floors.
-- A write with no waiter must cost nothing measurable: pt.add and
-- `st.x = i` rates of this build, and, when BEFORE (or PT_BENCH_OLD)
-- names the build folder of another procthread (e.g. one without pt.wait,
-- or the parent commit's), of that build too, alternating; the ratio is
-- the median of 9 rounds' ratios.  Target: ratio >= 0.97 (noise).  With
-- BEFORE, the ping-pong rows measure that build in the same rounds too.
-- Rows are printed as they are measured (the whole bench takes minutes).
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
local T = "timeout 120 "              -- every run is bounded: a hang is a failed run
local function me(build, args)
  return B.env_of(build) .. T .. B.lua .. " bench/wait_bench.lua " .. build .. " " .. args
end
local N = 50000                       -- round trips per run, for procthread and the floor
local before = arg[2] or B.old

-- A ping-pong row: this build (and the older one) beside both floors, in
-- alternating rounds; ratios are medians of the rounds' ratios.
local function pingpong(name, mode, kind, target)
  local function lua(build)
    return function() return B.run(me(build, ("%s %s %d"):format(mode, kind, N)), "rtt_us") end
  end
  local function c(policy)
    return function() return B.run(("%s%s pingpong %s %d %s"):format(T, floor, kind, N, policy), "rtt_us") end
  end
  local fs = { lua(B.build), c("spin"), c("sleep") }
  if before then fs[4] = lua(before) end
  local med, ratio = B.alternate(fs)
  local line = ("%-44s %10.2fus %10.2fus  ratio %7.3f %10.2fus  ratio %6.3f%s"):format(name,
    med[1], med[2], ratio[2], med[3], ratio[3], target and "  target <= " .. target or "")
  if before then line = line .. ("   before %.2fus, ratio to it %.3f"):format(med[4], ratio[4]) end
  B.say("%s", line)
end

B.say("%-44s %12s %12s %13s %12s", "measure", "procthread", "floor spin", "", "floor sleep")
for _, kind in ipairs({ "thread", "process" }) do
  pingpong("pt.wait ping-pong " .. kind .. "->" .. kind .. " vs C futex", "--pingpong", kind, "1.5")
  pingpong("semaphore ping-pong " .. kind .. " vs C futex", "--sem", kind)
end
for _, what in ipairs({ "add", "set" }) do
  local cmd = "--writes " .. what .. " 3000000"
  local name = what == "add" and "pt.add" or "st.c = i"
  local function rate(build) return function() return B.run(me(build, cmd), "ops_per_s") end end
  if before then                     -- the median of 9 rounds' ratios: the noise is large
    local med, ratio = B.alternate({ rate(B.build), rate(before) }, 9)
    B.say("%-44s %10.2fM  %10.2fM   ratio %6.3f  target >= 0.97", name .. ", no waiter, vs before",
          med[1] / 1e6, med[2] / 1e6, ratio[2])
  else
    B.say("%-44s %10.2fM  (no BEFORE build given)", name .. ", no waiter", B.median(rate(B.build), 5) / 1e6)
  end
end
