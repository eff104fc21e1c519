-- spec/process_child_spec.lua: what a process worker's child does between
-- the fork and running fn (process.c child_main, lifecycle.c lifeline).
local H = require "helper"

describe("a process worker's child", function()
  local before
  before_each(function() before = H.snapshot() end)
  after_each(function() H.check(before) end)

  it("sets os.exit without reading a global: a strict _G that raises on os does not reach it", function()
    -- the child used to look os up with lua_getglobal, outside any
    -- protected call: the strict __index raised in the child, which then
    -- ran on in the caller's code (and left through its atexit handlers)
    local status, out = H.fresh([[
      local pt = require "procthread"
      os = nil
      setmetatable(_G, { __index = function(_, k) error("strict: " .. tostring(k), 2) end })
      local ok, a, b = pcall(function()
        return pt.spawn_process(function() return 42 end):join(20)
      end)
      io.write("ran:", tostring(ok), ":", tostring(a), ":", tostring(b), "\n")
    ]])
    assert.are.equal(0, status, out)
    assert.are.equal("ran:true:true:42\n", out)
  end)

  it("answers its own results, not those of a copy made by a bare fork() in fn", function()
    -- the copy (a bare fork: not a spawn of ours) ran on in the worker's
    -- code when fn returned or failed there, and wrote its results down
    -- the worker's result pipe: the join answered the copy's error
    local so = H.foreign_fork_lib()
    local fork, wait = package.loadlib(so, "l_fork"), package.loadlib(so, "l_wait")
    local pt = require "procthread"
    for _, how in ipairs { "error", "return" } do
      local w = pt.spawn_process(function()
        if fork() == 0 then
          if how == "error" then error("the copy's error") end
          return "the copy's result"
        end
        local code = wait()               -- the copy has ended first
        return "the worker's own", code
      end)
      local r = H.pack(w:join(H.T))
      assert.are.same({ n = 3, true, "the worker's own", how == "error" and 1 or 0 }, r)
    end
    os.remove(so)
  end)

  it("a bare fork()'s copy of a worker that runs threads leaves at once", function()
    -- the copy took the worker's count of running thread workers along
    -- (none of them exist in it) and, leaving, waited a second for them
    local so = H.foreign_fork_lib()
    local fork, wait = package.loadlib(so, "l_fork"), package.loadlib(so, "l_wait")
    local pt = require "procthread"
    local w = pt.spawn_process(function()
      local t = pt.spawn_thread(function() local pt = require "procthread" pt.sleep(H.T) end)
      pt.sleep(0.05)
      local t0 = pt.now()
      if fork() == 0 then return "the copy's" end
      local code = wait()
      local took = pt.now() - t0
      t:cancel()
      return code, took
    end)
    local ok, code, took = w:join(H.T)
    os.remove(so)
    assert.is_true(ok, code)
    assert.are.equal(0, code)
    assert.is_true(took < 0.5, "the copy took " .. tostring(took) .. " s to leave")
  end)

  -- code for H.in_bare_fork's setup: eventfds() counts this process's
  local EVENTFDS = [[
    local function eventfds()
      local n, p = 0, io.popen("ls -l /proc/" .. pt.self().id .. "/fd 2>/dev/null")
      for l in p:lines() do if l:find("eventfd", 1, true) then n = n + 1 end end
      p:close()
      return n
    end
  ]]

  it("leaves the Ctrl-C wake-up eventfd out of the child of a bare fork()", function()
    -- the SIGINT handler, inherited, wrote the parent's fd from the child:
    -- a SIGINT of the child woke the parent's waits, and the child's own
    -- waits could read away the parent's wake-up
    H.in_bare_fork(EVENTFDS .. [[
      local parent_n = eventfds()
      assert(parent_n == 1, "the interpreter's SIGINT handler is chained: one eventfd, got " .. parent_n)
    ]], [[
      local n = eventfds()
      io.write("eventfds: parent ", parent_n, ", child ", n, "\n")
      return n == 0
    ]])
  end)

  -- pt.fault("nomem_start", n) counts this process's thread workers: its
  -- count came along into a bare fork made before any spawn
  it("leaves a pending nomem_start fault out of the child of a bare fork()", function()
    H.in_bare_fork([[
      pt.fault("nomem_start", 1)
    ]], [[
      local ok, v = pt.spawn_thread(function() return 5 end):join(20)
      io.write("child's thread: ", tostring(ok), " ", tostring(v), "\n")
      return ok == true and v == 5
    ]])
  end)

  it("leaves the eventfd it keeps for the next spawn out of the child of a bare fork()", function()
    -- an ended child's eventfd, kept for the next spawn, came along into
    -- a bare fork's child: parent and child then both used one eventfd
    -- for their workers' spills (a ring one read was lost to the other)
    H.in_bare_fork(EVENTFDS .. [[
      local before = eventfds()
      assert(pt.spawn_process(function() return 1 end):join(20))
      local parent_n = eventfds()
      assert(parent_n == before + 1, "the parent keeps one")
    ]], [[
      local n = eventfds()
      io.write("eventfds: parent ", parent_n, ", child ", n, "\n")
      return n == 0               -- nor the Ctrl-C one (the case above)
    ]])
  end)
end)
