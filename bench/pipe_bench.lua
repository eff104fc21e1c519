-- bench/pipe_bench.lua: procthread pipes against the plain-C floor
-- (bench/pipe_floor.c, built as build/<v>/bench/pipe_floor).
--
--   lua5.4 bench/pipe_bench.lua [build/5.4]
--
-- runs from the checkout (LUA_CPATH/LUA_PATH are set from the build folder)
-- and prints, for each measure, procthread, the floor and their ratio:
--   ping-pong: 8-byte messages between two processes over two pipes, both
--              ends pinned to one CPU (taskset -c 0); round trip in us
--   stream:    a child sends 4 KiB messages to its parent; MB/s of payload,
--              once with 4096-byte strings (two chunks each: 4096 bytes plus
--              the frame header and codec tag do not fit one PIPE_BUF write)
--              and once with the largest string whose frame is one 4 KiB
--              write (what the floor writes).
-- Targets (issue 4): ping-pong within 1.5x the floor, stream at least 0.6x.
local mode = arg[1]

if mode == "--pingpong" or mode == "--stream" then
  local pt = require "procthread"
  if mode == "--pingpong" then
    local n = tonumber(arg[2])
    local p1, p2 = pt.pipe(), pt.pipe()
    local child = pt.spawn_process(function()
      while true do
        local m = p1:recv()
        if not m then return true end
        p2:send(m)
      end
    end)
    local msg, t = "pingpong", {}
    for _ = 1, 1000 do p1:send(msg); p2:recv() end            -- warm-up
    for b = 1, 5 do
      local t0 = pt.now()
      for _ = 1, n do p1:send(msg); p2:recv() end
      t[b] = (pt.now() - t0) / n * 1e6
    end
    p1:send(false)
    assert(child:join(10))
    p1:close(); p2:close()
    table.sort(t)
    print(("rtt_us %.3f"):format(t[3]))
  else
    local mib, size = tonumber(arg[2]), tonumber(arg[3])
    local count = math.floor(mib * 1024 * 1024 / size)
    local p = pt.pipe()
    local t0 = pt.now()
    local child = pt.spawn_process(function()
      local s = ("x"):rep(size)
      for _ = 1, count do p:send(s) end
      return true
    end)
    p:close_write()                  -- or the end of stream never comes
    local got = 0
    while true do
      local s = p:recv()
      if not s then break end
      got = got + #s
    end
    local dt = pt.now() - t0
    assert(child:join(10))
    p:close()
    assert(got == count * size, "short stream")
    print(("mbps %.1f"):format(got / dt / 1e6))
  end
  os.exit(0)
end

package.path = "bench/?.lua;" .. package.path
local B = require "benchlib"
local build, lua, env, run, median = B.build, B.lua, B.env, B.run, B.median
local floor = build .. "/bench/pipe_floor"

local self = arg[0]
local N = 20000
local pp_floor = median(function() return run("taskset -c 0 " .. floor .. " pingpong " .. N, "rtt_us") end, 3)
local pp_pt = median(function()
  return run(env .. "taskset -c 0 " .. lua .. " " .. self .. " --pingpong " .. N, "rtt_us") end, 3)
local MIB = 256
local st_floor = median(function() return run(floor .. " stream " .. MIB, "mbps") end, 3)
local st_pt = median(function()
  return run(env .. lua .. " " .. self .. " --stream " .. MIB .. " 4096", "mbps") end, 3)
-- one 4 KiB write per message: 16-byte frame header, 3 bytes of codec tag
local st_pt1 = median(function()
  return run(env .. lua .. " " .. self .. " --stream " .. MIB .. " 4077", "mbps") end, 3)

print(("%-44s %12s %12s %8s"):format("measure (" .. lua .. ")", "procthread", "C floor", "ratio"))
print(("%-44s %12.2f %12.2f %8.2f  (target <= 1.5)"):format("ping-pong round trip, 1 CPU (us)", pp_pt, pp_floor, pp_pt / pp_floor))
print(("%-44s %12.0f %12.0f %8.2f  (target >= 0.6)"):format("stream 4096-byte messages (MB/s)", st_pt, st_floor, st_pt / st_floor))
print(("%-44s %12.0f %12.0f %8.2f  (target >= 0.6)"):format("stream 4077-byte messages, 4 KiB writes (MB/s)", st_pt1, st_floor, st_pt1 / st_floor))
