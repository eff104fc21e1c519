-- bench/pipe_bench.lua: procthread pipes against the plain-C floor
-- (bench/pipe_floor.c, built as build/<v>/bench/pipe_floor).
--
--   lua5.4 bench/pipe_bench.lua [build/5.4]
--
-- runs from the checkout (LUA_CPATH/LUA_PATH are set from the build folder)
-- and prints, for each measure, procthread, the floor and their ratio:
--   ping-pong: 8-byte messages between two processes over two pipes, both
--              ends pinned to one CPU (taskset -c 0); round trip in us, in
--              rounds that alternate the floor and procthread
--   stream:    a child process sends 4 KiB messages to its parent; MB/s of
--              payload, once with 4096-byte strings (one frame and one
--              write each when the pipe has room: 4099 encoded bytes go as
--              one chunk of up to two pages) and once with the largest
--              string whose frame is one PIPE_BUF write (4077 bytes).  Each
--              round runs the floor and both right after one another, and
--              the ratio is taken within the round (the machine is shared:
--              rounds apart differ more than the runs of one round); the
--              median round is printed.
--   luaposix:  the peer, in the same stream rounds: pipe, fork, and
--              posix.unistd write/read of 4096-byte strings, under the first
--              of lua5.3, lua5.2, lua5.1 that has luaposix (the row says
--              "not installed" when none has)
-- Targets: ping-pong within 1.5x the floor (issue 4); stream at least
-- 0.65x the floor, luaposix's figure (issue 12).
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

if mode == "--posix-stream" then       -- the luaposix peer (lua5.1-5.3)
  local unistd, wait = require "posix.unistd", require "posix.sys.wait"
  local mib, size = tonumber(arg[2]), tonumber(arg[3])
  local count = math.floor(mib * 1024 * 1024 / size)
  local ptime = require "posix.time"
  local function now()
    local t = ptime.clock_gettime(ptime.CLOCK_MONOTONIC)
    return t.tv_sec + t.tv_nsec * 1e-9
  end
  local r, w = unistd.pipe()
  local t0 = now()
  local pid = unistd.fork()
  if pid == 0 then
    unistd.close(r)
    local s = ("x"):rep(size)
    for _ = 1, count do
      local off = 0
      while off < size do off = off + assert(unistd.write(w, off == 0 and s or s:sub(off + 1))) end
    end
    unistd._exit(0)
  end
  unistd.close(w)
  local got = 0
  while true do
    local s = assert(unistd.read(r, size))
    if #s == 0 then break end
    got = got + #s
  end
  local dt = now() - t0
  wait.wait(pid)
  assert(got == count * size, "short stream")
  print(("mbps %.1f"):format(got / dt / 1e6))
  os.exit(0)
end

package.path = "bench/?.lua;" .. package.path
local B = require "benchlib"
local build, lua, env, run = B.build, B.lua, B.env, B.run
local floor = build .. "/bench/pipe_floor"
local self = arg[0]

-- The first Lua with luaposix, or nil.
local function posix_lua()
  for _, l in ipairs { "lua5.3", "lua5.2", "lua5.1" } do
    local ok = os.execute(l .. " -e 'require \"posix.unistd\"' >/dev/null 2>&1")
    if ok == true or ok == 0 then return l end      -- 5.2+: true; 5.1: 0
  end
end

-- Rounds of the measures named in `cols` (each a function returning a
-- figure), run one after another in every round; per round each figure's
-- ratio to the round's `base`.  Returns, per column, the median figure and
-- the median ratio.
local function rounds(n, base, cols)
  local figs, ratios = {}, {}
  for _, c in ipairs(cols) do figs[c.key], ratios[c.key] = {}, {} end
  for r = 1, n do
    local got = {}
    for _, c in ipairs(cols) do got[c.key] = c.run() end
    for _, c in ipairs(cols) do
      figs[c.key][r] = got[c.key]
      ratios[c.key][r] = got[c.key] / got[base]
    end
  end
  local function median(t)
    table.sort(t)
    return t[math.floor((#t + 1) / 2)]
  end
  local out = {}
  for _, c in ipairs(cols) do out[c.key] = { fig = median(figs[c.key]), ratio = median(ratios[c.key]) } end
  return out
end

-- PT_BENCH_OLD=<build folder of another tree>: its figures in the same rounds
local old = os.getenv("PT_BENCH_OLD")
local oenv = old and ("LUA_CPATH=%q LUA_PATH=%q "):format(old .. "/?.so;;", "lua/?.lua;lua/?/init.lua;;")
local N = 20000
local pcols = {
  { key = "f", run = function() return run("taskset -c 0 " .. floor .. " pingpong " .. N, "rtt_us") end },
  { key = "p", run = function()
      return run(env .. "taskset -c 0 " .. lua .. " " .. self .. " --pingpong " .. N, "rtt_us") end },
}
if old then
  pcols[3] = { key = "o", run = function()
    return run(oenv .. "taskset -c 0 " .. lua .. " " .. self .. " --pingpong " .. N, "rtt_us") end }
end
local pp = rounds(3, "f", pcols)
local MIB = 256
local plua = posix_lua()
local cols = {
  { key = "f", run = function() return run(floor .. " stream " .. MIB, "mbps") end },
  { key = "a", run = function() return run(env .. lua .. " " .. self .. " --stream " .. MIB .. " 4096", "mbps") end },
  -- one 4 KiB write per message: 16-byte frame header, 3 bytes of codec tag
  { key = "b", run = function() return run(env .. lua .. " " .. self .. " --stream " .. MIB .. " 4077", "mbps") end },
}
if plua then
  cols[#cols + 1] = { key = "x", run = function()
    return run(plua .. " " .. self .. " --posix-stream " .. MIB .. " 4096", "mbps") end }
end
if old then
  cols[#cols + 1] = { key = "oa", run = function() return run(oenv .. lua .. " " .. self .. " --stream " .. MIB .. " 4096", "mbps") end }
  cols[#cols + 1] = { key = "ob", run = function() return run(oenv .. lua .. " " .. self .. " --stream " .. MIB .. " 4077", "mbps") end }
end
local st = rounds(5, "f", cols)

print(("%-44s %12s %12s %8s"):format("measure (" .. lua .. ")", "figure", "C floor", "ratio"))
print(("%-44s %12.2f %12.2f %8.2f  (target <= 1.5)"):format("ping-pong round trip, 1 CPU (us)",
  pp.p.fig, pp.f.fig, pp.p.ratio))
if old then
  print(("%-44s %12.2f %12.2f %8.2f"):format("  the same, " .. old, pp.o.fig, pp.f.fig, pp.o.ratio))
end
local function row(name, k)
  print(("%-44s %12.0f %12.0f %8.2f  (target >= 0.65, luaposix)"):format(name, st[k].fig, st.f.fig, st[k].ratio))
end
row("stream 4096-byte messages (MB/s)", "a")
row("stream 4077-byte messages (MB/s)", "b")
if old then
  row("  the same, " .. old .. ", 4096-byte", "oa")
  row("  the same, " .. old .. ", 4077-byte", "ob")
end
if plua then
  print(("%-44s %12.0f %12.0f %8.2f  (the peer)"):format("luaposix " .. plua .. ", 4096-byte strings (MB/s)",
    st.x.fig, st.f.fig, st.x.ratio))
else
  print(("%-44s %12s"):format("luaposix, 4096-byte strings (MB/s)", "not installed"))
end
