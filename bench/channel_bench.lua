-- bench/channel_bench.lua: channels against the plain-C floor
-- (bench/channel_floor.c) and procthread's own pipe, in alternating rounds.
--
--   lua5.4 bench/channel_bench.lua [build/5.4]
--   PT_BENCH_OLD=/tmp/old/build/5.4 lua5.4 bench/channel_bench.lua
--
-- With PT_BENCH_OLD (another build folder: an older tree) each row
-- measures that build in the same rounds too.  Rows are printed as they
-- are measured.
--
-- Targets (issue 11): thread to thread, small messages >= 1/6 of a C
-- mutex/condvar queue (also pinned to one CPU), 4 KiB >= 1/3; process to
-- process >= 2x the pipe for small messages, >= the pipe for 4 KiB;
-- ping-pong through two channels within 1.3x a C futex ping-pong.
package.path = "bench/?.lua;" .. package.path
local B = require "benchlib"
local mode = arg[2]

-- Each child run times only the messages: the worker says it is ready
-- (and, streaming, when it has received them all) through a channel.
if mode == "--stream" then           -- [build] --stream kind mech size n
  local pt = require "procthread"
  local kind, mech, size, n = arg[3], arg[4], tonumber(arg[5]), tonumber(arg[6])
  local c = mech == "channel" and pt.channel(64) or pt.pipe()
  local ack = pt.channel(1)
  local msg = ("x"):rep(size)
  local w = pt.spawn(kind, function(ch, a, k)
    a:send("ready")
    for _ = 1, k do ch:recv() end
    return a:send("done")
  end, c, ack, n)
  assert(ack:recv(60) == "ready")
  local t0 = pt.now()
  for _ = 1, n do c:send(msg) end
  assert(ack:recv(60) == "done")
  print(("msgs_per_s %.0f"):format(n / (pt.now() - t0)))
  assert(w:join(60))
  if c.close then c:close() end
  return
elseif mode == "--pingpong" then     -- [build] --pingpong kind n
  local pt = require "procthread"
  local kind, n = arg[3], tonumber(arg[4])
  local a, b = pt.channel(1), pt.channel(1)
  local w = pt.spawn(kind, function(x, y, k) for _ = 0, k do y:send(x:recv()) end return true end, a, b, n)
  a:send(0); b:recv()                -- the worker runs
  local t0 = pt.now()
  for _ = 1, n do a:send(1); b:recv() end
  print(("rtt_us %.3f"):format((pt.now() - t0) / n * 1e6))
  assert(w:join(60))
  return
end

local floor = B.build .. "/bench/channel_floor"
-- Every run is bounded: a hang shows as a failed run, not a stuck bench.
local T = "timeout 120 "
local function pin(on) return on and "taskset -c 0 " or "" end
-- A run of this script's child mode under the build folder `build`.
local function me(build, args, key, pinned)
  return B.run(B.env_of(build) .. T .. pin(pinned) .. B.lua .. " bench/channel_bench.lua " .. build
               .. " " .. args, key)
end
local function C(args, key, pinned) return B.run(T .. pin(pinned) .. floor .. " " .. args, key) end
local N, PP = 200000, 50000        -- messages streamed; round trips of a ping-pong

-- A row: procthread's figure (args, under this build and, with
-- PT_BENCH_OLD, the older one) beside the floor's (f2), in alternating
-- rounds; ratios are medians of the rounds' ratios.
local function row(name, args, key, pinned, f2, fmt, target)
  local function lua(build) return function() return me(build, args, key, pinned) end end
  local fs = { lua(B.build), f2 }
  if B.old then fs[3] = lua(B.old) end
  local med, ratio = B.alternate(fs)
  local line = (fmt .. "  ratio %6.3f  target %s"):format(name, med[1], med[2], ratio[2], target)
  if B.old then line = line .. ("   before %.6g, ratio to it %.3f"):format(med[3], ratio[3]) end
  B.say("%s", line)
end
local RATE = "%-44s %12.0f %12.0f"

B.say("%-44s %12s %12s", "measure (msg/s unless said)", "procthread", "floor")
row("thread->thread 8 B, channel vs C queue", "--stream thread channel 8 " .. N, "msgs_per_s", false,
    function() return C("queue " .. N * 10 .. " 8", "msgs_per_s") end, RATE, ">= 0.167")
row("  pinned to one CPU", "--stream thread channel 8 " .. N, "msgs_per_s", true,
    function() return C("queue " .. N * 10 .. " 8", "msgs_per_s", true) end, RATE, ">= 0.167")
row("thread->thread 4 KiB, channel vs C queue", "--stream thread channel 4096 " .. N, "msgs_per_s", false,
    function() return C("queue " .. N * 2 .. " 4096", "msgs_per_s") end, RATE, ">= 0.333")
for _, size in ipairs({ 8, 4096 }) do
  row(("process->process %s, channel vs pipe"):format(size == 8 and "8 B" or "4 KiB"),
      ("--stream process channel %d %d"):format(size, N), "msgs_per_s", false,
      function() return me(B.build, ("--stream process pipe %d %d"):format(size, N), "msgs_per_s") end,
      RATE, size == 8 and ">= 2" or ">= 1")
end
for _, kind in ipairs({ "thread", "process" }) do
  row("ping-pong " .. kind .. " to " .. kind .. ", 2 channels vs C futex", "--pingpong " .. kind .. " " .. PP,
      "rtt_us", false, function() return C("pingpong " .. PP, "rtt_us") end, "%-44s %10.2fus %10.2fus", "<= 1.3")
end
