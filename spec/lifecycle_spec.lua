-- Lifecycle (DESIGN.md "Lifecycle: exit, parent death, Ctrl-C"): what a
-- program's end, its death and a Ctrl-C do to its workers.  Every case
-- runs a real interpreter (the one running the specs).
local pt = require "procthread"
local H = require "helper"

-- ---- helpers -------------------------------------------------------------

local function tmpfile(text)
  local name = os.tmpname()
  local f = assert(io.open(name, "w")); f:write(text or ""); f:close()
  return name
end

local function slurp(name)
  local f = io.open(name)
  if not f then return nil end
  local s = f:read("*a"); f:close()
  return s
end

-- A process that exists and is not a zombie.
local function alive(pid)
  local s = slurp("/proc/" .. pid .. "/stat")
  return s ~= nil and s:match("^%d+ %b() (%a)") ~= "Z"
end

local function all_gone(pids, timeout)
  return H.eventually(function()
    for _, p in ipairs(pids) do if alive(p) then return false end end
    return true
  end, timeout)
end

local function kill(sig, pids)
  if #pids > 0 then os.execute("kill -" .. sig .. " " .. table.concat(pids, " ") .. " 2>/dev/null") end
end

-- Whether the pids are gone within timeout; then (never leave one behind,
-- even failing) they are killed.
local function gone_then_kill(pids, timeout)
  local gone = all_gone(pids, timeout)
  kill("KILL", pids)
  return gone
end

-- Under AddressSanitizer the scripts run without LeakSanitizer (as
-- H.fresh does): its tracer fails on threads still leaving at exit.
local ENV = ("%sLUA_PATH=%q LUA_CPATH=%q"):format(
  os.getenv("ASAN_OPTIONS") and "ASAN_OPTIONS=$ASAN_OPTIONS:detect_leaks=0 " or "",
  package.path, package.cpath)

-- Every script starts with this: `pt`, `me` (its pid) and `ready(...)`,
-- which prints "ready <me> <pids...>" once the scene is set.
local PRELUDE = [[
local pt = require "procthread"
local f = io.open("/proc/self/stat"); local me = f:read("*l"):match("^(%d+)"); f:close()
local function ready(...)
  io.stdout:write(table.concat({ "ready", me, ... }, " "), "\n"); io.stdout:flush()
end
]]

-- Start a script in the background (no child of ours: its shell has left).
-- timeout(1) runs it with SIGINT at its default disposition, which a
-- background job of sh would otherwise ignore.  Returns an object:
-- ready() waits for the ready line and gives its pids; finish(t) waits
-- for the end and gives status, output (nil on timeout).
local function background(code)
  local script = tmpfile(PRELUDE .. code)
  local out = tmpfile()
  local cmd = ("(%s timeout 60 %s %s >%s 2>&1; echo \"::status:$?\" >>%s) >/dev/null 2>&1 &")
    :format(ENV, H.interpreter(), script, out, out)
  os.execute(cmd)
  local run = {}
  function run.ready()
    local line
    assert(H.eventually(function()
      line = (slurp(out) or ""):match("ready ([%d ]+)\n")
      return line ~= nil
    end, 20), "the script never got ready: " .. tostring(slurp(out)))
    local pids = {}
    for p in line:gmatch("%d+") do pids[#pids + 1] = p end
    run.pid = table.remove(pids, 1)
    return pids
  end
  function run.finish(t)
    local s
    local ok = H.eventually(function()
      s = slurp(out) or ""
      return s:match("::status:%d+") ~= nil
    end, t)
    if not ok then return nil, s end
    return tonumber(s:match("::status:(%d+)")), (s:gsub("::status:%d+%s*$", ""))
  end
  function run.cleanup(pids)
    if run.pid then kill("KILL", { run.pid }) end
    kill("KILL", pids or {})
    run.finish(10)
    os.remove(script); os.remove(out)
  end
  return run
end

-- Run a script to its end: status, output, seconds taken.  Its output
-- goes to a file (a worker left running must not hold our pipe open);
-- `inner` is shell run just before the interpreter, inside timeout(1)
-- (for example "trap '' TERM;", which timeout would otherwise undo).
local function fresh(code, inner)
  local script, out = tmpfile(PRELUDE .. code), tmpfile()
  local t0 = pt.now()
  local p = io.popen(("%s timeout 60 sh -c %q >%s 2>&1; echo $?")
    :format(ENV, (inner or "") .. " exec " .. H.interpreter() .. " " .. script, out))
  local status = tonumber(p:read("*a"):match("%d+")); p:close()
  local took = pt.now() - t0
  local text = slurp(out)
  os.remove(script); os.remove(out)
  return status, text, took
end

describe("lifecycle", function()
  H.no_leaks()

  -- ---- 26: at exit --------------------------------------------------------

  describe("at exit", function()
    local endings = {
      ["the script returns"] = "",
      ["the script errors"] = "error('the end')",
      ["os.exit"] = "os.exit(0)",
      ["os.exit(0, true) (5.2+: closes the state)"] = "os.exit(0, true)",
    }
    for name, ending in pairs(endings) do
      it("waits for the workers never joined when " .. name, function()
        local ft, fp = os.tmpname(), os.tmpname()
        os.remove(ft); os.remove(fp)
        local status, out = fresh(([[
          local t = pt.spawn_thread(function(f)
            require("procthread").sleep(0.3)
            local h = io.open(f, "w"); h:write("thread"); h:close()
          end, %q)
          local p = pt.spawn_process(function(f)
            require("procthread").sleep(0.3)
            local h = io.open(f, "w"); h:write("process"); h:close()
          end, %q)
          %s
        ]]):format(ft, fp, ending))
        local wt, wp = slurp(ft), slurp(fp)
        os.remove(ft); os.remove(fp)
        assert.are.equal("thread", wt, out)
        assert.are.equal("process", wp, out)
        assert.matches("procthread: waited for 2 workers at exit", out, 1, true)
        local _, lines = out:gsub("procthread: ", "")
        assert.are.equal(1, lines, out)                  -- one line, once
        assert.are.equal(ending == "" and 0 or ending:match("error") and 1 or 0, status)
      end)
    end

    -- the sentinel is finalized before every worker handle however many
    -- are alive (guards any change to how handles or the sentinel are
    -- made, e.g. handles made ahead in batches with one sentinel a batch)
    it("waits for 40 workers never joined, their 40 handles alive", function()
      local dir = os.tmpname()
      os.remove(dir)
      local status, out = fresh(([[
        local keep = {}
        for i = 1, 40 do
          keep[i] = pt.spawn_process(function(f)
            require("procthread").sleep(0.3)
            local h = io.open(f, "w"); h:write("done"); h:close()
          end, %q .. i)
        end
      ]]):format(dir))
      local done = 0
      for i = 1, 40 do
        if slurp(dir .. i) == "done" then done = done + 1 end
        os.remove(dir .. i)
      end
      assert.are.equal(0, status, out)
      assert.are.equal(40, done, out)
      assert.matches("procthread: waited for 40 workers at exit", out, 1, true)
    end)

    -- the child of a bare fork() made after spawns (the sentinel it
    -- inherits is the parent's, pid and all) that spawns: its own
    -- lua_close waits for its worker (a sentinel reused rather than made
    -- at its spawn would not: a batch of handles made ahead failed here)
    it("waits for the workers of a bare fork's child at its own lua_close", function()
      local so, file = H.foreign_fork_lib(), os.tmpname()
      os.remove(file)
      local status, out = fresh(([[
        local fork, wait = package.loadlib(%q, "l_fork"), package.loadlib(%q, "l_wait")
        for _ = 1, 3 do assert(pt.spawn_process(function() end):join()) end
        io.stdout:flush()
        if fork() == 0 then
          pt.spawn_process(function(f)
            require("procthread").sleep(0.3)
            local h = io.open(f, "w"); h:write("done"); h:close()
          end, %q)
          return
        end
        io.write("child exit ", wait(), "\n")
      ]]):format(so, so, file))
      local got = slurp(file)
      os.remove(so); os.remove(file)
      assert.are.equal(0, status, out)
      assert.matches("child exit 0\n", out, 1, true)
      assert.are.equal("done", got, out)
      assert.matches("procthread: waited for 1 worker at exit", out, 1, true)
    end)

    it("stops them with at_exit = \"stop\" and says so", function()
      local status, out, took = fresh([[
        pt.configure{ at_exit = "stop" }
        local t = pt.spawn_thread(function() require("procthread").sleep(100) end)
        local busy = pt.spawn_process(function() while true do end end)
        local idle = pt.spawn_process(function() require("procthread").sleep(100) end)
        ready(busy.id, idle.id)
      ]])
      local pids = {}
      for p in (out:match("ready %d+ ([%d ]+)") or ""):gmatch("%d+") do pids[#pids + 1] = p end
      local gone = gone_then_kill(pids, 5)
      assert.are.equal(2, #pids, out)
      assert.are.equal(0, status, out)
      assert.matches("procthread: stopped 3 workers at exit", out, 1, true)
      assert.is_true(took < 10, "took " .. took)
      assert.is_true(gone)
    end)

    it("stops a thread whose handle was collected, well within exit_grace", function()
      local status, out, took = fresh([[
        pt.configure{ at_exit = "stop", exit_grace = 20 }
        pt.spawn_thread(function() require("procthread").sleep(100) end)
        collectgarbage(); collectgarbage()
      ]])
      assert.are.equal(0, status, out)
      assert.matches("procthread: stopped 1 worker at exit", out, 1, true)
      assert.is_true(took < 10, "took " .. took)
    end)

    it("stops everything, itself aside, when a thread worker calls os.exit", function()
      local status, out, took = fresh([[
        local p = pt.spawn_process(function() require("procthread").sleep(100) end)
        ready(p.id)
        local t = pt.spawn_thread(function() os.exit(7) end)
        pt.sleep(100)
      ]])
      local pid = out:match("ready %d+ (%d+)")
      assert.is_truthy(pid, out)
      local gone = gone_then_kill({ pid }, 5)
      assert.are.equal(7, status, out)
      assert.matches("procthread: stopped 1 worker at exit", out, 1, true)
      assert.is_true(took < 10, "took " .. took)
      assert.is_true(gone)
    end)

    -- the exit runs on the thread worker: the other thread, asleep in a
    -- cancellation point, is cancelled at once, not waited for through
    -- exit_grace (its handle is alive; the main thread is joining)
    it("cancels a sleeping thread at once when a thread worker calls os.exit", function()
      local status, out, took = fresh([[
        pt.configure{ exit_grace = 40 }
        local sleeper = pt.spawn_thread(function() require("procthread").sleep(100) end)
        local t = pt.spawn_thread(function() require("procthread").sleep(0.1); os.exit(7, true) end)
        t:join(50)
        print("not reached")
      ]])
      assert.are.equal(7, status, out)
      assert.not_matches("not reached", out)
      assert.matches("procthread: stopped 1 worker at exit", out, 1, true)
      assert.is_true(took < 20, "took " .. took)
    end)

    -- a worker's SIGTERM starts at its default action (cancel must end
    -- it): here the worker's own code ignores it, as a user's signal
    -- library would, through a C module made for the test
    it("gives a process that ignores SIGTERM exit_grace seconds, then kills it", function()
      local so = H.cc("#include <signal.h>\nint luaopen_ignore_term(void *L);\n" ..
                      "int luaopen_ignore_term(void *L) { (void)L; signal(SIGTERM, SIG_IGN); return 0; }\n",
                      "-shared -fPIC")
      local status, out, took = fresh(([[
        pt.configure{ at_exit = "stop", exit_grace = 1.5 }
        local flag = pt.shared_table { ignoring = false }
        local p = pt.spawn_process(function()
          assert(package.loadlib(%q, "luaopen_ignore_term"))()
          flag.ignoring = true
          require("procthread").sleep(100)
        end)
        while not flag.ignoring do pt.sleep(0.001) end
        ready(p.id)
      ]]):format(so))
      os.remove(so)
      local pid = out:match("ready %d+ (%d+)")
      assert.is_truthy(pid, out)
      local gone = gone_then_kill({ pid }, 5)
      assert.matches("procthread: stopped 1 worker at exit", out, 1, true)
      assert.is_true(took >= 1.4, "took " .. took)
      assert.is_true(took < 15, "took " .. took)
      assert.is_true(gone)
      assert.are.equal(0, status)
    end)

    it("leaves a detached process running, says nothing of joined ones; a thread cannot be detached", function()
      local status, out = fresh([[
        local p = pt.spawn_process(function() require("procthread").sleep(60) end)
        assert(pt.detach(p) == true)
        local t = pt.spawn_thread(function() return 1 end)
        local ok, err = pcall(pt.detach, t)
        assert(not ok and err:match("detach: a thread cannot outlive its process"), err)
        local q = pt.spawn_process(function() return 2 end)
        assert(t:join() and q:join())        -- joined: nothing to say at exit
        ready(p.id)
      ]])
      local pid = out:match("ready %d+ (%d+)")
      assert.is_truthy(pid, out)
      assert.are.equal(0, status, out)
      assert.not_matches("procthread:", out)
      pt.sleep(0.3)       -- its parent is gone: the lifeline would act now
      local was_alive = alive(pid)
      kill("KILL", { pid })
      assert.is_true(was_alive)
      assert.is_true(all_gone({ pid }, 5))
    end)

    -- found by attack: pt.detach took a handle inherited by a forked child
    -- (true, and the parent's record changed in the child's copy), where
    -- every worker method raises
    it("refuses to detach a worker of another process (a forked child's inherited handle)", function()
      local p = pt.spawn_process(function() pt.sleep(0.3) end)
      local c = pt.spawn_process(function() return pcall(pt.detach, p) end)
      local ok, dok, err = c:join(H.T)
      assert.is_true(ok, dok)
      assert.is_false(dok)
      assert.matches("^detach: this worker belongs to another process %(pid %d+%)$", err)
      assert.is_true((p:join(H.T)))
    end)

    -- results beyond the pipe (64 KiB) wait for the parent to read them:
    -- once it is gone nobody will, and the worker must end, although the
    -- read end lives on in it and in its detached sibling
    it("ends a detached process whose results exceed the pipe once its parent is gone", function()
      local status, out = fresh([[
        local big = function() return ("r"):rep(200000) end
        local j = pt.spawn_process(big)
        pt.detach(j)
        local ok, r = j:join(20)               -- the parent alive: still joined
        assert(ok and #r == 200000, tostring(r))
        local p = pt.spawn_process(big)
        -- forked after p: it has a copy of p's read end
        local sibling = pt.spawn_process(function() require("procthread").sleep(60) end)
        pt.detach(sibling); pt.detach(p)
        ready(p.id, sibling.id)
      ]])
      local pid, sibling = out:match("ready %d+ (%d+) (%d+)")
      assert.is_truthy(pid, out)
      assert.are.equal(0, status, out)
      local gone = gone_then_kill({ pid }, 10)
      local sibling_alive = alive(sibling)
      kill("KILL", { sibling })
      assert.is_true(gone, "the detached worker still blocks on its results")
      assert.is_true(sibling_alive)
      assert.is_true(all_gone({ sibling }, 5))
    end)

    -- each error is raised at the caller's level: the position is the
    -- caller's line, never one of procthread's init.lua
    it("configure's errors carry the caller's position", function()
      local function where(...)
        local args = { n = select("#", ...), ... }
        local ok, err = pcall(function() pt.configure((table.unpack or unpack)(args, 1, args.n)) end)
        assert.is_false(ok)
        return err
      end
      local here = "^[^:]*lifecycle_spec%.lua:%d+: bad argument #1 to 'configure' "
      assert.matches(here .. "%(table expected, got number%)$", where(5))
      assert.matches(here .. "%(table expected, got nil%)$", where(nil))
      assert.matches(here .. "%(table expected, got no value%)$", where())
      assert.matches(here .. "%(unknown option 'foo'%)$", where { foo = 1 })
      assert.matches(here .. "%(at_exit must be", where { at_exit = 1 })
    end)

    -- A pipe recv of the main thread blocks in read() itself, and Ctrl-C's
    -- handler wakes it with a real-time signal of its own (recv_signal).
    it("takes the recv_signal configured at the first blocking recv, and refuses a bad one", function()
      local status, out = fresh([[
        local bad = {}
        for _, v in ipairs { 5, -1, 1.5, "x", 65, 0.5 } do
          local ok, err = pcall(pt.configure, { recv_signal = v })
          if ok or not tostring(err):match("recv_signal must be a real%-time signal number") then bad[#bad + 1] = tostring(v) end
        end
        assert(pt.configure{ recv_signal = 41 })
        local q = pt.pipe()
        local r = pt.spawn_process(function() pt.sleep(0.1); q:send(2) end)
        assert(q:recv() == 2)                      -- blocked in read: the signal is taken
        assert(r:join(10))
        q:close()
        local ok, err = pcall(pt.configure, { recv_signal = 42 })
        if ok or not tostring(err):match("configure it before first use") then bad[#bad + 1] = "42 after" end
        if not pcall(pt.configure, { recv_signal = 41 }) then bad[#bad + 1] = "41 again" end
        local f = io.open("/proc/self/status"); local st = f:read("*a"); f:close()
        local cgt = st:match("SigCgt:%s*(%x+)")
        print("bad=" .. table.concat(bad, ",") .. " caught41=" .. math.floor(tonumber(cgt:sub(-11), 16) / 2 ^ 40) % 2)
      ]])
      assert.are.equal(0, status, out)
      assert.matches("bad= caught41=1", out, 1, true)
    end)

    -- Under ThreadSanitizer no read is steered (its interceptors run
    -- signal handlers late, in a context of their own, and do not see the
    -- raw read): recv polls first there, and the spec's probe is refused.
    it("steers no pipe read under ThreadSanitizer, and does on x86-64 otherwise", function()
      local status, out = fresh([[ print("probe " .. tostring((pcall(pt.configure, { _recv_probe = 10 })))) ]])
      local tsan = H.interpreter():match("lua%-tsan") ~= nil
      assert.are.equal(0, status, out)
      assert.matches("probe " .. tostring(not tsan), out, 1, true)
    end)

    it("refuses a bad at_exit or exit_grace, naming configure", function()
      assert.has_error(function() pt.configure{ at_exit = "later" } end,
        "bad argument #1 to 'configure' (at_exit must be \"wait\" or \"stop\")")
      assert.has_error(function() pt.configure{ exit_grace = -1 } end,
        "bad argument #1 to 'configure' (exit_grace must be a number of seconds >= 0)")
      assert.is_true(pt.configure{ at_exit = "wait", exit_grace = 1 })
    end)
  end)

  -- ---- 27: parent death -----------------------------------------------------

  describe("parent death", function()
    it("a SIGKILLed parent's process workers, busy, idle and pooled, are gone within a second or two", function()
      local run = background([[
        local busy = pt.spawn_process(function() while true do end end)
        local idle = pt.spawn_process(function() require("procthread").sleep(1000) end)
        local pool = pt.pool("process", 2)
        for i = 1, 2 do pool:submit(function() while true do end end) end
        local ids = { busy.id, idle.id }
        for _, id in ipairs(pool:workers()) do ids[#ids + 1] = id end
        pt.sleep(0.2)                      -- the pool workers took their tasks
        ready((table.unpack or unpack)(ids))
        pt.sleep(1000)
      ]])
      local pids = run.ready()
      assert.are.equal(4, #pids)
      for _, p in ipairs(pids) do assert.is_true(alive(p), p) end
      kill("KILL", { run.pid })
      local t0 = pt.now()
      local gone = all_gone(pids, 2)
      local took = pt.now() - t0
      run.cleanup(pids)
      assert.is_true(gone, "still running after " .. took .. " s")
    end)

    -- An ended child's lifeline is kept for the next spawn.  A process
    -- forked by other means (a bare fork(): no procthread fork path) must
    -- not hold its write end: the next worker, armed on it, would then
    -- outlive its parent for as long as that process lives.  `before` and
    -- `after` run around the bare fork; then the next worker is spawned.
    local function bare_fork_case(before, after)
      local so = H.foreign_fork_lib()
      local run = background(([[
        local fork = package.loadlib(%q, "l_fork")
        %s
        local other = fork()
        if other == 0 then                 -- the bare child: waits to be killed
          require("procthread").sleep(60); os.exit(0)
        end
        %s
        local w = pt.spawn_process(function() require("procthread").sleep(1000) end)
        ready(w.id, other)
        pt.sleep(1000)
      ]]):format(so, before, after))
      local pids = run.ready()
      os.remove(so)
      local was_alive = alive(pids[1])
      kill("KILL", { run.pid })
      local gone = all_gone({ pids[1] }, 2)
      local other_alive = alive(pids[2])
      run.cleanup(pids)
      assert.is_true(was_alive)
      assert.is_true(other_alive, "the bare fork ended: nothing tested")
      assert.is_true(gone, "the worker outlived its parent")
    end

    it("a SIGKILLed parent's worker on a kept lifeline is gone, though a bare fork of it lives on", function()
      bare_fork_case([[assert(pt.spawn_process(function() end):join(20))  -- ended: its lifeline kept]], "")
    end)

    -- found by review: a bare fork made while the first worker still ran
    -- inherited its live lifeline (only kept ones are closed in a fork's
    -- child), which was then kept and armed for the next worker
    it("a SIGKILLed parent's next worker is gone, though a bare fork made while the first one ran lives on", function()
      bare_fork_case([[local w1 = pt.spawn_process(function() require("procthread").sleep(0.3) end)]],
                     [[assert(w1:join(20))             -- ended: its lifeline may be kept]])
    end)

    it("a detached worker on a kept lifeline outlives its parent; the next worker does not", function()
      local run = background([[
        local sleep = function() require("procthread").sleep(1000) end
        assert(pt.spawn_process(function() end):join(20))      -- ended: its lifeline kept
        local d = pt.spawn_process(sleep)
        pt.detach(d)
        assert(pt.spawn_process(function() end):join(20))
        local w = pt.spawn_process(sleep)
        ready(d.id, w.id)
        pt.sleep(1000)
      ]])
      local pids = run.ready()
      kill("KILL", { run.pid })
      local gone = all_gone({ pids[2] }, 2)
      pt.sleep(0.3)
      local detached_alive = alive(pids[1])
      run.cleanup(pids)
      assert.is_true(gone, "the worker outlived its parent")
      assert.is_true(detached_alive, "the detached worker was killed")
    end)

    it("a child forked from a thread worker survives that thread's end, not its process's", function()
      local run = background([[
        local t = pt.spawn_thread(function()
          local p = require("procthread").spawn_process(function()
            require("procthread").sleep(1000)
          end)
          return p.id
        end)
        local ok, pid = t:join()
        assert(ok and t:status() == "succeeded")
        pt.sleep(0.3)
        ready(pid)
        pt.sleep(1000)
      ]])
      local pids = run.ready()
      local survived = alive(pids[1])
      kill("KILL", { run.pid })
      local gone = all_gone(pids, 2)
      run.cleanup(pids)
      assert.is_true(survived)
      assert.is_true(gone)
    end)
  end)

  -- ---- 28: Ctrl-C -------------------------------------------------------------

  -- These need the interpreter's own SIGINT handling (lua.c's and
  -- luajit.c's hook that raises "interrupted!"), which procthread chains
  -- in front of: the ThreadSanitizer build's interpreter (spec/tsan/lua.c,
  -- minimal) has none, so no handler is chained and a SIGINT just ends it.
  -- Not a race: tagged notsan.
  describe("one Ctrl-C", function()
    -- Run `script` in the background; once it is ready and (0.2 s later)
    -- blocked in the call it ends with, one SIGINT must end it with the
    -- interpreter's traceback, and its workers (the pids it said) be gone.
    local function interrupts(name, script)
      it("interrupts " .. name .. " #notsan", function()
        local run = background(script)
        local pids = run.ready()
        pt.sleep(0.2)               -- into the blocking call
        local sigign = (slurp("/proc/" .. run.pid .. "/status") or ""):match("SigIgn:%s*(%x+)")
        assert.is_truthy(sigign)
        assert.are.equal(0, tonumber(sigign:sub(-1), 16) % 4 >= 2 and 1 or 0, "SIGINT ignored")
        local t0 = pt.now()
        kill("INT", { run.pid })
        local status, out = run.finish(8)
        local took = pt.now() - t0
        local gone = all_gone(pids, 3)
        run.cleanup(pids)
        assert.is_truthy(status, "still blocked " .. took .. " s after SIGINT: " .. tostring(out))
        assert.matches("interrupted!", out, 1, true)
        assert.matches("stack traceback:", out, 1, true)
        assert.are_not.equal(0, status)
        assert.is_true(took < 4, "took " .. took)
        assert.is_true(gone, "workers left running")
      end)
    end

    -- a blocking call: { name, setup, call }, next to a busy process worker
    local calls = {
      { "sleep", "", "pt.sleep(100)" },
      { "thread join", "local w = pt.spawn_thread(function() require('procthread').sleep(100) end)",
        "w:join()" },
      { "process join", "local w = pt.spawn_process(function() require('procthread').sleep(100) end); ids[#ids + 1] = w.id",
        "w:join()" },
      { "pipe recv", "local p = pt.pipe()", "p:recv()" },
      -- recv blocks in read() itself, woken by its own signal (recv_signal)
      -- or, with none, polls first
      { "pipe recv with recv_signal = 0", "pt.configure{ recv_signal = 0 }; local p = pt.pipe()", "p:recv()" },
      { "pipe recv with a chosen recv_signal", "pt.configure{ recv_signal = 40 }; local p = pt.pipe()", "p:recv()" },
      { "pipe recv in a process worker's", "local p = pt.pipe(); local w = pt.spawn_process(function() p:recv() end); ids[#ids + 1] = w.id",
        "p:recv()" },
      { "pipe send on a full pipe", "local p = pt.pipe()", "p:send(string.rep('x', 1000000))" },
      { "select", "local p, q = pt.pipe(), pt.pipe()", "pt.select({ p, q })" },
      { "select on a channel", "local ch = pt.channel()", "pt.select({ ch })" },
      { "channel recv", "local ch = pt.channel()", "ch:recv()" },
      { "semaphore acquire", "local s = pt.semaphore(0)", "s:acquire()" },
      { "pt.wait", "local st = pt.shared_table { k = 1 }", "pt.wait(st, 'k', 1)" },
      { "pt.wait inside pt.locked", "local st = pt.shared_table { k = 1 }",
        "pt.locked(st, function() pt.wait(st, 'k', 1) end)" },
      { "select on a channel and a pipe", "local ch, p = pt.channel(), pt.pipe()", "pt.select({ ch, p })" },
      { "future:get", "local pool = pt.pool('process', 1); for _, id in ipairs(pool:workers()) do ids[#ids + 1] = id end; local f = pool:submit(function() require('procthread').sleep(100) end)",
        "f:get()" },
      { "pool:map", "local pool = pt.pool('process', 2); for _, id in ipairs(pool:workers()) do ids[#ids + 1] = id end",
        "pool:map(function(x) require('procthread').sleep(100) end, { 1, 2, 3 })" },
    }
    for _, c in ipairs(calls) do
      interrupts(c[1] .. " with the interpreter's traceback, and the workers are gone", ([[
        local ids = {}
        %s
        local busy = pt.spawn_process(function() while true do end end)
        ids[#ids + 1] = busy.id
        ready((table.unpack or unpack)(ids))
        %s
      ]]):format(c[2], c[3]))
    end

    -- The recv signal (40 here) taken by the program after the first recv
    -- took it: a C library of the spec's own (all five Luas; no luaposix
    -- on 5.4) sets SIG_DFL (a real-time signal's default kills), a handler
    -- that says so on stderr, or blocks it in the main thread.
    local function recv_signal_lib()
      return H.cc([[
        #include <signal.h>
        #include <unistd.h>
        typedef struct lua_State lua_State;
        static void count(int sig) { (void)sig; if (write(2, "SAW40 ", 6) < 0) {} }
        int l_dfl(lua_State *L) { (void)L; signal(40, SIG_DFL); return 0; }
        int l_handler(lua_State *L) { (void)L; signal(40, count); return 0; }
        int l_block(lua_State *L) {
          sigset_t s;
          (void)L;
          sigemptyset(&s); sigaddset(&s, 40);
          sigprocmask(SIG_BLOCK, &s, 0);
          return 0;
        }
      ]], "-shared -fPIC")
    end

    -- A script that blocks in recv with no message coming: `before` runs
    -- first (so.<fn>() are the library's functions).  SIGINT is sent by
    -- the spec (kill) or comes by itself (the probe): it must end the
    -- recv with the interpreter's traceback, within 4 s, not kill it.
    local function recv_interrupted(before, kill_it)
      local so = recv_signal_lib()
      local run = background(([[
        local so = {}
        for _, f in ipairs { "dfl", "handler", "block" } do so[f] = package.loadlib(%q, "l_" .. f) end
        pt.configure{ recv_signal = 40 }
        local p = pt.pipe()
        local w = pt.spawn_process(function() pt.sleep(0.1); p:send(1) end)
        assert(p:recv() == 1)            -- blocked in read: the recv signal is taken
        assert(w:join(10))
        local f = io.open("/proc/self/status"); local st = f:read("*a"); f:close()
        assert(math.floor(tonumber(st:match("SigCgt:%%s*(%%x+)"):sub(-10), 16) / 2 ^ 39) %% 2 == 1, "40 not taken")
        %s
        ready()
        p:recv()
      ]]):format(so, before))
      run.ready()
      pt.sleep(0.2)
      local t0 = pt.now()
      if kill_it then kill("INT", { run.pid }) end
      local status, out = run.finish(6)
      local took = pt.now() - t0
      run.cleanup()
      os.remove(so)
      assert.is_truthy(status, "still blocked " .. took .. " s: " .. tostring(out))
      assert.matches("interrupted!", out, 1, true)
      assert.is_nil(out:find("SAW40", 1, true), out)   -- no recv signal sent to the program's handler
      assert.are.equal(1, status, out)            -- an error, not killed by a signal
      assert.is_true(took < 4, "took " .. took)
    end

    -- the probe: the recv sends itself SIGUSR1 from inside the gap (after
    -- its look at the SIGINT count), whose handler raises SIGINT; that
    -- handler then returns into the gap, and read() would block
    it("interrupts a recv when the Ctrl-C comes inside another signal's handler that interrupted the read's start #notsan", function()
      recv_interrupted("pt.configure{ _recv_probe = 10 }", false)
    end)
    for _, how in ipairs { "dfl", "handler", "block" } do
      it("interrupts a recv after the program took the recv signal (" .. how .. ") #notsan", function()
        recv_interrupted("so." .. how .. "()", true)
      end)
      it("interrupts a recv after the program took the recv signal (" .. how .. "), the Ctrl-C inside another handler #notsan", function()
        recv_interrupted("so." .. how .. "(); pt.configure{ _recv_probe = 10 }", false)
      end)
    end

    -- a shared-table lock wait: another worker holds pt.locked on st
    for _, holder in ipairs { "thread", "process" } do
      for _, stmt in ipairs { "st.x = 1", "local y = st.x", "pt.locked(st, function() end)", "pt.add(st, 'n', 1)" } do
        interrupts("a shared-table lock wait (" .. stmt .. ", a " .. holder .. " holds the lock)", ([[
          local st, go = pt.shared_table {}, pt.event()
          local w = pt.spawn(%q, function() pt.locked(st, function() go:set(); pt.sleep(100) end) end)
          go:wait(20)
          ready(%s)
          %s
        ]]):format(holder, holder == "process" and "w.id" or "", stmt))
      end
    end

    -- The SIGINT handler writes Ctrl-C's wake-up eventfd.  A process
    -- worker's code may close the number it inherited from its parent and
    -- reuse it: neither a SIGINT nor the worker's first waits (which make
    -- its own wake-up fd) may touch what now holds that number.
    it("leaves alone a file a process worker opened at the parent's wake-up fd number #notsan", function()
      local so = H.cc([[
        #include <dirent.h>
        #include <fcntl.h>
        #include <signal.h>
        #include <stdio.h>
        #include <stdlib.h>
        #include <string.h>
        #include <unistd.h>
        typedef struct lua_State lua_State;
        extern const char *lua_tolstring(lua_State *L, int i, size_t *len);
        extern void lua_pushinteger(lua_State *L, long long n);
        extern void lua_pushstring(lua_State *L, const char *s);
        int l_evfd(lua_State *L) {     /* this process's (only) eventfd, or -1 */
          DIR *d = opendir("/proc/self/fd");
          struct dirent *e;
          int fd = -1;
          while (d && (e = readdir(d))) {
            char p[300], t[64];
            ssize_t n;
            snprintf(p, sizeof p, "/proc/self/fd/%s", e->d_name);
            if ((n = readlink(p, t, sizeof t - 1)) < 0) continue;
            t[n] = 0;
            if (strcmp(t, "anon_inode:[eventfd]") == 0) fd = atoi(e->d_name);
          }
          if (d) closedir(d);
          lua_pushinteger(L, fd);
          return 1;
        }
        int l_steal(lua_State *L) {    /* (n, path): path's file at fd n */
          int n = atoi(lua_tolstring(L, 1, NULL)), fd;
          close(n);
          fd = open(lua_tolstring(L, 2, NULL), O_RDWR | O_CREAT | O_TRUNC, 0600);
          if (fd != n) { dup2(fd, n); close(fd); }
          lua_pushinteger(L, write(n, "intact", 6));
          return 1;
        }
        int l_sigint(lua_State *L) { (void)L; kill(getpid(), SIGINT); return 0; }
        int l_check(lua_State *L) {    /* (n, path): "ok" or what is wrong */
          int n = atoi(lua_tolstring(L, 1, NULL)), fd;
          const char *path = lua_tolstring(L, 2, NULL);
          char p[64], t[4096], b[64];
          ssize_t k;
          snprintf(p, sizeof p, "/proc/self/fd/%d", n);
          if ((k = readlink(p, t, sizeof t - 1)) < 0) { lua_pushstring(L, "fd closed"); return 1; }
          t[k] = 0;
          if (strcmp(t, path) != 0) { lua_pushstring(L, t); return 1; }
          fd = open(path, O_RDONLY);
          k = read(fd, b, sizeof b - 1);
          close(fd);
          b[k < 0 ? 0 : k] = 0;
          lua_pushstring(L, strcmp(b, "intact") == 0 ? "ok" : "file written");
          return 1;
        }
      ]], "-shared -fPIC")
      local file = os.tmpname()
      local status, out = fresh(([[
        local so, file = %q, %q
        local n = package.loadlib(so, "l_evfd")()
        assert(n >= 0, "no wake-up eventfd")
        local w = pt.spawn_process(function(so, file, n)
          local pt = require "procthread"
          local steal, sigint, check = package.loadlib(so, "l_steal"), package.loadlib(so, "l_sigint"),
            package.loadlib(so, "l_check")
          assert(steal(n, file) == 6)
          pcall(function() sigint() end)     -- the interpreter's hook raises here
          pt.sleep(0.01)                     -- nil, "interrupted" or not: no matter
          pt.sleep(0.01)
          local p = pt.pipe()
          p:recv(0.01)
          return check(n, file)
        end, so, file, n)
        print("child:", w:join())
      ]]):format(so, file))
      os.remove(so); os.remove(file)
      assert.are.equal(0, status, out)
      assert.matches("child:\ttrue\tok\n", out)
    end)

    it("during the at-exit wait stops the workers instead #notsan", function()
      local run = background([[
        local p = pt.spawn_process(function() require("procthread").sleep(100) end)
        ready(p.id)
      ]])
      local pids = run.ready()
      pt.sleep(0.3)                 -- in the at-exit wait by now
      kill("INT", { run.pid })
      local status, out = run.finish(8)
      local gone = all_gone(pids, 3)
      run.cleanup(pids)
      assert.is_truthy(status, "the at-exit wait was not interrupted: " .. tostring(out))
      assert.matches("procthread: stopped 1 worker at exit", out, 1, true)
      assert.is_true(gone)
    end)
  end)
end)
