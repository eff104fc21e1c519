-- Spawning at speed (issue 12): the mechanisms that make a spawn + join
-- cheap, each checked where it could break.
local pt = require "procthread"
local H = require "helper"

describe("spawn", function()
  H.no_leaks()

  describe("process join", function()
    -- A sleeping join learns from its sleep (the drain eventfd readable)
    -- that the results do not fit the pipe, and reads nothing before it.
    -- If it missed that, it would sleep on an fd that stays readable and
    -- never read the pipe: the child would wait for room until the timeout.
    for _, timeout in ipairs { 10, math.huge } do
      it("a sleeping join (" .. tostring(timeout) .. ") reads results bigger than the pipe", function()
        local status, out = H.fresh(([[
          local pt = require "procthread"
          for i = 1, 3 do
            local w = pt.spawn_process(function(n) return ("r"):rep(n), n end, 2^20 + i)
            local ok, v, n = w:join(%s)
            print(ok, v and #v, n)
          end
        ]]):format(timeout == math.huge and "math.huge" or timeout))
        assert.are.equal(0, status, out)
        for i = 1, 3 do
          assert.matches(("true%%s+%d%%s+%d"):format(2^20 + i, 2^20 + i), out)
        end
      end)
    end
  end)

  -- What the parent writes between a process's fork and its join is a
  -- copy-on-write fault each page: a worker that succeeded with no
  -- results answers true, made again at every ask, not stored on the
  -- handle (5.4: its user value; 5.1-5.3, LuaJIT: the answers table).
  describe("a plain success", function()
    local function stored(w)
      if debug.getuservalue and _VERSION == "Lua 5.4" then return (debug.getuservalue(w, 1)) end
      local answers = debug.getregistry()["procthread.answers"]
      return answers and answers[w]
    end
    for _, kind in ipairs { "process", "thread" } do
      it("answers true at every join, none stored (" .. kind .. ")", function()
        local w = pt.spawn(kind, function() end)
        assert.are.same({ true }, { w:join(H.T) })
        assert.is_nil(stored(w))
        assert.are.same({ true }, { w:join(H.T) })
        assert.are.same({ true }, { w:join(0) })
        assert.are.equal("succeeded", w:status())
        assert.is_nil(stored(w))
        -- one with results, or an error, is kept: the same table again
        local r = pt.spawn(kind, function() return {} end)
        local _, t1 = r:join(H.T)
        assert.is_not_nil(stored(r))
        local _, t2 = r:join(H.T)
        assert.are.equal(t1, t2)
        local e = pt.spawn(kind, function() error("no", 0) end)
        local ok, m1 = e:join(H.T)
        assert.is_false(ok)
        assert.matches("^no", m1)
        assert.is_not_nil(stored(e))
        assert.are.same({ false, m1 }, { e:join(H.T) })
      end)
    end
  end)

  describe("thread spawn", function()
    -- One thread makes its state while the other runs a worker: a spawn
    -- starts a second OS thread rather than wait, never a third.  (One
    -- more may come when both are still finishing their last worker, on
    -- a loaded machine; a spawn that always started one makes ~200.)
    it("spawn after spawn runs on two OS threads, a few more at worst", function()
      local ids, n = {}, 0
      for _ = 1, 200 do
        local w = pt.spawn_thread(function() end)
        assert(w:join(H.T))
        if not ids[w.id] then ids[w.id] = true; n = n + 1 end
      end
      assert.is_true(n >= 1 and n <= 6, n .. " OS threads")
      assert.is_true(pt._spare_threads() <= 4, pt._spare_threads())
    end)

    -- a new state's first memory is one block cut in order: blocks that
    -- grow out of it are copied, frees of its blocks are skipped
    it("a worker whose memory grows out of its state's first block keeps its values", function()
      local status, out = H.fresh([[
        local pt = require "procthread"
        for _ = 1, 5 do
          local ok, a, b, c = pt.spawn_thread(function()
            local t, parts = {}, {}
            for i = 1, 30000 do t[i] = i end
            for i = 1, 2000 do parts[i] = ("%05d"):format(i) end
            local s = table.concat(parts)
            collectgarbage(); collectgarbage()
            local sum = 0
            for i = 1, #t do sum = sum + t[i] end
            return sum, #s, s:sub(-5) .. ("x"):rep(100000):sub(1, 3)
          end):join(20)
          print(ok, a, b, c)
        end
      ]])
      assert.are.equal(0, status, out)
      local _, k = out:gsub("true%s+450015000%s+10000%s+02000xxx", "")
      assert.are.equal(5, k, out)
    end)

    -- the thread wakes a joiner waiting for it to be done with the
    -- record's fds only when one said it waits: none may sleep for ever
    it("a thousand spawns and joins in a row never leave a joiner asleep", function()
      local status, out = H.fresh([[
        local pt = require "procthread"
        local f = function() end
        for _ = 1, 1000 do assert(pt.spawn_thread(f):join(20)) end
        print("done")
      ]])
      assert.are.equal(0, status, out)
      assert.matches("done", out)
    end)

    -- a leaving worker process cancels its threads and waits for them on
    -- a word that the last one wakes: it does not sit out the whole second
    it("a worker process leaves soon after its running threads end", function()
      local t0 = pt.now()
      local ok, v = pt.spawn_process(function()
        for _ = 1, 3 do pt.spawn_thread(function() pt.sleep(30) end) end
        return 7
      end):join(H.T)
      local took = pt.now() - t0
      assert.are.same({ true, 7 }, { ok, v })
      assert.is_true(took < 0.8, took)
    end)
  end)

  -- A new child's path from its fork to its exit (issue 12, pspawn3):
  -- what it leaves out must not change what it does.
  describe("a new child", function()
    local function has_strace()
      local r = os.execute("strace -V >/dev/null 2>&1")
      return r == true or r == 0
    end

    -- getpid() is a system call each time: the child asks once (fork.c's
    -- handler), and every later need reads that (shm.c asked 3 more times)
    it("asks the system for its pid once #notsan", function()
      if not has_strace() then pending("no strace") return end
      local d = H.tmpdir()
      local trace = d .. "/trace"
      local status, out = H.fresh_under("strace -f -qq -e trace=getpid -o " .. H.shell_quote(trace), [[
        local pt = require "procthread"
        local st = pt.shared_table()
        st.x = 1
        local w = pt.spawn_process(function() return st.x end)
        assert(w:join(20))
        print("child", w.id)
      ]])
      local f = assert(io.open(trace))
      local text = f:read("*a")
      f:close()
      H.rmdir(d)
      assert.are.equal(0, status, out)
      local child, n = assert(out:match("child%s+(%d+)"), out), 0
      for pid in text:gmatch("(%d+)%s+getpid%(") do
        if pid == child then n = n + 1 end
      end
      assert.are.equal(1, n, text)
    end)

    -- the exit flushes only when a stream holds output: what the child
    -- left buffered still arrives, on stdout and in a file never closed,
    -- on a plain return, an error and os.exit
    for _, how in ipairs { "return", "error", "os.exit" } do
      it("writes its buffered output when it leaves (" .. how .. ")", function()
        local d = H.tmpdir()
        local status, out = H.fresh(([[
          local pt = require "procthread"
          io.stdout:setvbuf("full")
          io.write("before ")
          local w = pt.spawn_process(function(path, how)
            io.write("child-out")
            local f = assert(io.open(path, "w"))
            f:setvbuf("full")
            f:write("child-file")
            if how == "error" then error("boom") end
            if how == "os.exit" then os.exit(3) end
          end, %q, %q)
          w:join(20)
          io.write(" after\n")
          local f = assert(io.open(%q))
          print(f:read("*a"))
          f:close()
        ]]):format(d .. "/out", how, d .. "/out"))
        H.rmdir(d)
        assert.are.equal(0, status, out)
        assert.matches("before child%-out after", out)
        assert.matches("child%-file", out)
      end)
    end

    -- the kept drain eventfd is read back to 0 only after a child that
    -- may have rung it: spawns whose results fit PIPE_BUF, fit the pipe,
    -- and spill over it, in turns, each read whole
    it("results of every size in turns, the drain eventfd kept between them", function()
      for _ = 1, 3 do
        for _, n in ipairs { 10, 5000, 2^20, 0, 4096 - 9, 4096 - 8, 70000 } do
          local ok, v = pt.spawn_process(function(k) return ("d"):rep(k) end, n):join(H.T)
          assert.is_true(ok, v)
          assert.are.equal(n, #v)
        end
      end
    end)

    -- a child that made shared objects of its own still gives them back
    -- at its exit (the exit functions look before they lock)
    it("gives back the shared objects it made when it leaves", function()
      local base = H.usage()
      assert(pt.spawn_process(function()
        local t = pt.shared_table()
        for i = 1, 100 do t[i] = ("x"):rep(100) end
        _G.keep = { t, pt.channel(), pt.array(8, "shared") }
      end):join(H.T))
      H.assert_released(base)
    end)

    -- found by attack: the count of pt.fault("nomem_start", n), "the next
    -- n thread workers of this process", came along into a spawned child,
    -- whose own first thread worker then failed to start
    it("starts with no nomem_start fault of its parent's", function()
      pt.fault("nomem_start", 1)
      finally(function() pt.fault("nomem_start", 0) end)
      local w = pt.spawn_process(function()
        return require("procthread").spawn_thread(function() return 1 end):join(20)
      end)
      assert.are.same({ true, true, 1 }, { w:join(H.T) })
      -- the parent's is still there, for its own next thread worker
      assert.are.same({ false, "cannot create a Lua state: not enough memory" },
        { pt.spawn_thread(function() return 2 end):join(H.T) })
      assert.are.same({ true, 3 }, { pt.spawn_thread(function() return 3 end):join(H.T) })
    end)
  end)
end)
