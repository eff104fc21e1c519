-- bench/channel_bench.lua: channels against the plain-C floor
-- (bench/channel_floor.c) and procthread's own pipe, in alternating rounds.
--
--   lua5.4 bench/channel_bench.lua [build/5.4]
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
local me = B.env .. T .. B.lua .. " bench/channel_bench.lua " .. B.build
local function lua(args, pin)
  return B.run(B.env .. T .. (pin and "taskset -c 0 " or "") .. B.lua .. " bench/channel_bench.lua "
               .. B.build .. " " .. args, "msgs_per_s")
end
local function C(args, pin) return B.run(T .. (pin and "taskset -c 0 " or "") .. floor .. " " .. args, "msgs_per_s") end
local N, R = 200000, 5

-- Medians of R alternating rounds of f1 and f2.
local function alternate(f1, f2)
  local a, b = {}, {}
  for i = 1, R do a[i] = f1(); b[i] = f2() end
  table.sort(a); table.sort(b)
  return a[math.floor((R + 1) / 2)], b[math.floor((R + 1) / 2)]
end

local rows = {}
local function row(name, f1, f2, target, higher)
  local a, b = alternate(f1, f2)
  local ratio = a / b
  rows[#rows + 1] = ("%-44s %12.0f %12.0f  ratio %6.3f  target %s %s"):format(
    name, a, b, ratio, higher and ">=" or "<=", target)
end
row("thread->thread 8 B, channel vs C queue", function() return lua("--stream thread channel 8 " .. N) end,
    function() return C("queue " .. N * 10 .. " 8") end, "0.167", true)
row("  pinned to one CPU", function() return lua("--stream thread channel 8 " .. N, true) end,
    function() return C("queue " .. N * 10 .. " 8", true) end, "0.167", true)
row("thread->thread 4 KiB, channel vs C queue", function() return lua("--stream thread channel 4096 " .. N) end,
    function() return C("queue " .. N * 2 .. " 4096") end, "0.333", true)
row("process->process 8 B, channel vs pipe", function() return lua("--stream process channel 8 " .. N) end,
    function() return lua("--stream process pipe 8 " .. N) end, "2", true)
row("process->process 4 KiB, channel vs pipe", function() return lua("--stream process channel 4096 " .. N) end,
    function() return lua("--stream process pipe 4096 " .. N) end, "1", true)
for _, kind in ipairs({ "thread", "process" }) do
  local a, b = alternate(function() return B.run(me .. " --pingpong " .. kind .. " 50000", "rtt_us") end,
                         function() return B.run(T .. floor .. " pingpong 200000", "rtt_us") end)
  rows[#rows + 1] = ("%-44s %10.2fus %10.2fus  ratio %6.3f  target <= 1.3"):format(
    "ping-pong " .. kind .. " to " .. kind .. ", 2 channels vs C futex", a, b, a / b)
end
print(("%-44s %12s %12s"):format("measure (msg/s unless said)", "procthread", "floor"))
for _, r in ipairs(rows) do print(r) end
