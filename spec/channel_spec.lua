-- Channels: pt.channel, ch:send/offer/recv/close, #ch, ch:capacity().
-- Bounds are generous: the machine is shared and noisy.
local pt = require "procthread"
local H = require "helper"

local T = 10   -- bound for joins and receives

local sleeping = require "blocked"   -- a worker asleep in the kernel

describe("channels", function()
  H.no_leaks()

  describe("messages", function()
    it("are bounded FIFOs of codec values, capacity 64 by default", function()
      local ch = pt.channel()
      assert.equal(64, ch:capacity())
      assert.equal(0, #ch)
      local st = pt.shared_table({ n = 1 })
      assert.is_true(ch:send(1, "two", { three = 3 }, st))
      assert.is_true(ch:send())
      assert.equal(2, #ch)
      local a, b, c, d = ch:recv()
      assert.equal(1, a); assert.equal("two", b); assert.same({ three = 3 }, c)
      assert.equal(st, d)                      -- the same shared table
      assert.equal(0, select("#", ch:recv()))
      assert.same({ nil, "timeout" }, { ch:recv(0) })
    end)

    it("carry channels by reference, to threads and processes", function()
      local ch, back = pt.channel(), pt.channel()
      for _, kind in ipairs({ "thread", "process" }) do
        local w = pt.spawn(kind, function(c)
          local reply = c:recv()
          return reply:send("hello from " .. pt.self().kind)
        end, ch)
        ch:send(back)
        assert.same({ "hello from " .. kind }, { back:recv(T) })
        assert.is_true(w:join(T))
      end
    end)

    it("carry big messages whole, inline and in blocks of their own", function()
      local ch, back = pt.channel(4), pt.channel(4)
      local sizes = { 0, 1, 40, 56, 57, 4096, 1024 * 1024 }
      local w = pt.spawn_process(function(c, b)
        while true do
          local s = c:recv()
          if not s then return true end
          b:send(s)
        end
      end, ch, back)
      for _, n in ipairs(sizes) do
        local s = ("%08d"):format(n):rep(math.floor(n / 8) + 1):sub(1, n)
        ch:send(s)
        assert.equal(s, back:recv(T))
      end
      ch:send(false)
      assert.is_true(w:join(T))
    end)
  end)

  describe("bounds and timeouts", function()
    it("offer(0) never blocks on a full channel; offer(t) waits t", function()
      local ch = pt.channel(2)
      assert.is_true(ch:offer(0, "a")); assert.is_true(ch:offer(0, "b"))
      local t0 = pt.now()
      for _ = 1, 100 do assert.same({ nil, "timeout" }, { ch:offer(0, "c") }) end
      assert.is_true(pt.now() - t0 < 0.5)
      t0 = pt.now()
      assert.same({ nil, "timeout" }, { ch:offer(0.15, "c") })
      assert.is_true(pt.now() - t0 >= 0.14)
      assert.equal(2, #ch)
      assert.equal("a", ch:recv()); assert.equal("b", ch:recv())
    end)

    it("send blocks while full and resumes when a receiver makes room", function()
      local ch, done = pt.channel(1), pt.channel(1)
      ch:send("first")
      local w = pt.spawn_thread(function(c, d)
        c:send("second")                       -- blocks: the channel is full
        d:send("sent")
        return true
      end, ch, done)
      assert.truthy(sleeping(w))
      assert.same({ nil, "timeout" }, { done:recv(0) })
      assert.equal("first", ch:recv(T))
      assert.equal("sent", done:recv(T))
      assert.equal("second", ch:recv(T))
      assert.is_true(w:join(T))
    end)

    it("recv(timeout) times out; recv(math.huge) and offer(math.huge) wait for ever", function()
      local ch = pt.channel(1)
      local t0 = pt.now()
      assert.same({ nil, "timeout" }, { ch:recv(0.1) })
      assert.is_true(pt.now() - t0 >= 0.09)
      local w = pt.spawn_thread(function(c)
        local v = c:recv(math.huge)
        return v, c:offer(math.huge, "back")
      end, ch)
      assert.truthy(sleeping(w))
      ch:send("go")
      assert.same({ true, "go", true }, { w:join(T) })
      assert.equal("back", ch:recv(T))
    end)
  end)

  describe("closing", function()
    it("refuses sends, lets receivers drain, then says closed", function()
      local ch = pt.channel()
      ch:send(1); ch:send(2)
      ch:close()
      assert.same({ nil, "closed" }, { ch:send(3) })
      assert.same({ nil, "closed" }, { ch:offer(0, 3) })
      assert.equal(1, ch:recv()); assert.equal(2, ch:recv())
      assert.same({ nil, "closed" }, { ch:recv() })
      assert.same({ nil, "closed" }, { ch:recv(0) })
      ch:close()                               -- again: nothing happens
    end)

    it("wakes a blocked receiver and a blocked sender", function()
      local empty, full = pt.channel(1), pt.channel(1)
      full:send("x")
      local r = pt.spawn_thread(function(c) return c:recv() end, empty)
      local s = pt.spawn_process(function(c) return c:send("y") end, full)
      assert.truthy(sleeping(r)); assert.truthy(sleeping(s))
      empty:close(); full:close()
      assert.same({ true, nil, "closed" }, { r:join(T) })
      assert.same({ true, nil, "closed" }, { s:join(T) })
    end)

    if _VERSION == "Lua 5.4" then
      it("closes at the end of a <close> scope", function()
        local ch = pt.channel()
        assert(load([[local ch = ...; do local c <close> = ch end]]))(ch)
        assert.same({ nil, "closed" }, { ch:send(1) })
      end)
    end
  end)

  describe("many senders and receivers", function()
    it("2 threads + 2 processes each way: every message exactly once, FIFO per sender", function()
      local ch = pt.channel(16)
      local K = 2000
      local senders, receivers = {}, {}
      for i, kind in ipairs({ "thread", "thread", "process", "process" }) do
        receivers[i] = pt.spawn(kind, function(c)
          local got = {}
          while true do
            local who, seq = c:recv()
            if not who then return table.concat(got, " ") end
            got[#got + 1] = who .. ":" .. seq
          end
        end, ch)
      end
      for i, kind in ipairs({ "thread", "process", "thread", "process" }) do
        senders[i] = pt.spawn(kind, function(c, who, n)
          for s = 1, n do c:send(who, s) end
          return true
        end, ch, "s" .. i, K)
      end
      for _, w in ipairs(senders) do assert.is_true(w:join(60)) end
      ch:close()
      local seen, count = {}, 0
      for _, w in ipairs(receivers) do
        local ok, got = w:join(60)
        assert.is_true(ok, got)
        local last = {}
        for who, seq in got:gmatch("(s%d):(%d+)") do
          seq = tonumber(seq)
          local key = who .. ":" .. seq
          assert.is_nil(seen[key], "twice: " .. key)
          seen[key] = true
          count = count + 1
          assert.is_true(seq > (last[who] or 0), "out of order: " .. key)
          last[who] = seq
        end
      end
      assert.equal(4 * K, count)
    end)
  end)

  describe("waiting", function()
    local cases = {
      { "recv", function(c) return c:recv() end },
      { "send on a full channel", function(c) c:send(1); return c:send(2) end },
      { "offer(math.huge)", function(c) c:send(1); return c:offer(math.huge, 2) end },
    }
    for _, case in ipairs(cases) do
      it("a thread blocked in " .. case[1] .. " is cancelled", function()
        local ch = pt.channel(1)
        local w = pt.spawn_thread(case[2], ch)
        assert.truthy(sleeping(w))
        w:cancel()
        local ok, err = w:join(T)
        assert.is_false(ok)
        assert.matches("cancel", err)
      end)
    end

    it("loses no wake-up: ping-pong through two channels of capacity 1", function()
      -- a receiver whose spin gave up as the sender put slept without
      -- looking again, the message beside it (one run in a few hung)
      for _, kind in ipairs({ "thread", "process" }) do
        local a, b = pt.channel(1), pt.channel(1)
        local n = 20000
        local w = pt.spawn(kind, function(x, y, k)
          for _ = 1, k do
            local v = x:recv(10)
            if not v then return false, "lost at " .. _ end
            y:send(v)
          end
          return true
        end, a, b, n)
        for i = 1, n do
          a:send(i)
          local v = b:recv(T)
          if v ~= i then
            a:close()
            w:join(T)
            error(("%s: round %d of %d got %s"):format(kind, i, n, tostring(v)))
          end
        end
        assert.is_true(w:join(T))
      end
    end)

    it("uses no CPU while blocked", function()
      local ch = pt.channel()
      local w = pt.spawn_thread(function(c) return c:recv() end, ch)
      assert.truthy(sleeping(w))
      pt.sleep(0.5)
      ch:send("wake")
      assert.same({ true, "wake" }, { w:join(T) })
      local info = w:info()
      assert.is_true(info.cpu_user + info.cpu_sys < 0.05,
                     ("cpu %.3f s while blocked 0.5 s"):format(info.cpu_user + info.cpu_sys))
    end)
  end)

  describe("mistakes raise, naming the function", function()
    it("for capacities", function()
      for _, bad in ipairs({ 0, -1, 2 ^ 40, 1.5 }) do
        assert.has_error(function() pt.channel(bad) end)
        local ok, err = pcall(pt.channel, bad)
        assert.is_false(ok); assert.matches("channel", err)
      end
      assert.matches("channel", select(2, pcall(pt.channel, "x")))
    end)

    it("for timeouts and receivers", function()
      local ch = pt.channel()
      assert.matches("recv", select(2, pcall(ch.recv, ch, -1)))
      assert.matches("recv", select(2, pcall(ch.recv, ch, "soon")))
      assert.matches("offer", select(2, pcall(ch.offer, ch, -1, 1)))
      assert.matches("offer", select(2, pcall(ch.offer, ch)))
      assert.matches("channel expected", select(2, pcall(ch.send, {}, 1)))
      assert.matches("channel expected", select(2, pcall(ch.recv, pt.shared_table())))
      -- handles of another class and foreign userdata (methods compare
      -- metatables by the address they carry)
      local sem = pt.semaphore(1)
      assert.matches("channel expected", select(2, pcall(ch.recv, sem)))
      assert.matches("channel expected", select(2, pcall(ch.send, io.stdout, 1)))
      assert.matches("semaphore expected", select(2, pcall(sem.acquire, ch)))
    end)

    it("for values the codec refuses, leaving the channel as it was", function()
      local ch = pt.channel()
      local st = pt.shared_table()
      local ok, err = pcall(ch.send, ch, st, coroutine.create(function() end))
      assert.is_false(ok); assert.matches("message%[2%]", err)
      assert.equal(0, #ch)
    end)
  end)

  describe("the arena", function()
    it("a message too big for the arena fails cleanly before anything is written", function()
      local status, out = H.fresh([[
        local pt = require "procthread"
        pt.configure{ shm_size = "4M" }
        local ch = pt.channel(4)
        local st = pt.shared_table({ 1 })
        ch:send("small")
        local before = pt.shm_stats().objects
        local ok, err = pcall(ch.send, ch, st, ("x"):rep(8 * 1024 * 1024))
        assert(not ok and err:match("^send: shared memory exhausted"), err)
        assert(#ch == 1 and pt.shm_stats().objects == before, "changed")
        assert(ch:recv() == "small")
        assert(ch:send(st) and ch:recv() == st)
        assert(pt._shm_check())
        print("ok")
      ]])
      assert.equal(0, status, out)
      assert.matches("ok", out)
    end)

    it("a message that does not decode here releases what it holds; _recv says which it was", function()
      -- a process's private array cannot cross: recv raises, _recv (the
      -- pools') returns the values before it; the shared tables travelling
      -- with it (behind the array, and in a long message) are released
      local before = pt.shm_stats().objects
      local ch = pt.channel()
      local st = pt.shared_table({ 1 })
      local w = pt.spawn_process(function(c, t)
        local pt = require "procthread"
        local a = pt.array(1)
        c:send(1, a, t, ("z"):rep(200))
        c:send(2, t, a)
        return true
      end, ch, st)
      assert.is_true(H.join_ok(w, T))
      local ok, err = pcall(ch.recv, ch, T)
      assert.is_false(ok)
      assert.matches("private array cannot cross to another process", err)
      assert.same({ nil, "undecodable", "private array cannot cross to another process", 2, st },
        { ch:_recv(T) })
      ch, st, w = nil, nil, nil
      collectgarbage(); collectgarbage()
      assert.equal(before, pt.shm_stats().objects)
    end)

    it("a dropped channel frees its queued messages and what they reference", function()
      local before = pt.shm_stats().objects
      do
        local ch = pt.channel()
        ch:send(pt.shared_table({ 1 }), ("y"):rep(10000))
        ch:send(pt.channel())
      end
      collectgarbage(); collectgarbage()
      assert.equal(before, pt.shm_stats().objects)
    end)
  end)

  describe("lifetime across fork", function()
    it("a forked child holds its own count on a channel: a new channel never gets its messages", function()
      local go = pt.event()
      local function start()
        local ch = pt.channel(4)                    -- only the child uses it
        return pt.spawn_process(function()
          assert(go:wait(T))
          ch:send("from the child")
          return ch:recv(0)
        end)
      end
      local w = start()
      collectgarbage(); collectgarbage()          -- the parent's handle goes
      local innocent = pt.channel(4)              -- would reuse a freed block
      innocent:send("innocent")
      go:set()
      assert.are.same({ true, "from the child" }, { w:join(T) })
      assert.are.equal(1, #innocent)
      assert.are.same({ "innocent" }, { innocent:recv(0) })
    end)

    it("an event only a forked child uses outlives the parent's handle (fresh interpreter)", function()
      local status, out = H.fresh([[
        local pt = require "procthread"
        local go = pt.semaphore(0)
        local function start()
          local ev = pt.event()
          return pt.spawn_process(function() assert(go:acquire(20)); ev:set(); return ev:is_set() end)
        end
        local w = start()
        collectgarbage(); collectgarbage()
        local ch = pt.channel(4); ch:send("x")
        go:release()
        print("child", w:join(20))
        print("ch", #ch, ch:recv(0))
        print("again", ch:recv(0))
      ]])
      assert.are.equal(0, status, out)
      assert.matches("child%s+true%s+true", out)
      assert.matches("ch%s+1%s+x", out)
      assert.matches("again%s+nil%s+timeout", out)
    end)

    -- a handle whose object was freed under it (a count dropped too often,
    -- here by pt._shm_release) raises on every use and never touches the
    -- memory, which new objects of the same kind have taken
    for _, case in ipairs {
      { "channel", function() return pt.channel(4) end,
        function(h) return #h end, function(h) return h:send(1) end,
        function(h) return h:recv(0) end, function(h) return h:close() end },
      { "event", pt.event, function(h) return h:set() end,
        function(h) return h:wait(0) end },
      { "semaphore", function() return pt.semaphore(1) end,
        function(h) return h:release() end, function(h) return h:acquire(0) end },
      { "barrier", function() return pt.barrier(2) end,
        function(h) return h:wait(0) end },
    } do
      it("a handle to a freed " .. case[1] .. " raises on every use", function()
        local h = case[2]()
        pt._shm_release(h)                        -- its only count: freed under h
        local others = {}
        for i = 1, 8 do others[i] = pt.channel(4); others[i]:send(i) end
        for i = 3, #case do
          local ok, err = pcall(case[i], h)
          assert.is_false(ok)
          assert.matches(case[1] .. " has been freed", err)
        end
        local ok, err = pcall(pt.encode, h)
        assert.is_false(ok)
        assert.matches("has been freed", err)
        h = nil
        collectgarbage(); collectgarbage()        -- dropping h drops nothing
        for i = 1, 8 do
          assert.are.equal(1, #others[i])
          assert.are.equal(i, others[i]:recv(0))
        end
        assert.is_true(pt._shm_check())
      end)
    end
  end)

  describe("crashes #stress", function()
    it("processes SIGKILLed while sending, receiving and waiting, hundreds of rounds", function()
      local status, out = H.fresh([[
        local pt = require "procthread"
        local ch = pt.channel(8)
        local st = pt.shared_table()
        local seen = pt.shared_table()
        local rounds, lost = 300, 0
        local base = 0
        math.randomseed(os.time())
        for round = 1, rounds do
          st.sent = base
          local s = pt.spawn_process(function(c, t, from)
            local i = from
            while true do
              i = i + 1
              c:send(i, ("p"):rep(i % 3 == 0 and 3000 or 10))
              t.sent = i
            end
          end, ch, st, base)
          local r = pt.spawn_process(function(c, sn)
            while true do
              local i = c:recv()
              pt.add(sn, i, 1)
            end
          end, ch, seen)
          pt.sleep(math.random() * 0.004)
          if math.random(2) == 1 then s:kill("KILL"); r:kill("KILL")
          else r:kill("KILL"); s:kill("KILL") end
          s:join(10); r:join(10)
          while true do                       -- nobody blocks: drain it
            local i = ch:recv(0)
            if not i then break end
            pt.add(seen, i, 1)
          end
          local sent = st.sent
          local missing = 0
          for i = base + 1, sent do
            local n = seen[i] or 0
            assert(n <= 1, "message " .. i .. " received twice")
            if n == 0 then missing = missing + 1 end
          end
          assert(missing <= 1, "round " .. round .. ": " .. missing .. " messages lost")
          lost = lost + missing
          local extra = seen[sent + 1]        -- sent, killed before it noted so
          assert(not extra or extra == 1)
          base = sent + 1
          local ok, bad = pt._shm_check()
          assert(ok, bad)
        end
        assert(ch:send("still", "works") and ch:recv(1) == "still")
        print("ok", lost)
      ]])
      assert.equal(0, status, out)
      assert.matches("ok", out)
    end)

    it("a thread blocked in recv or send outlives peers SIGKILLed at random moments", function()
      -- a peer killed after its publishing store and before its wake would
      -- leave the survivor asleep beside a change: #ch would stay put
      local status, out = H.fresh([[
        local pt = require "procthread"
        local a, b = pt.channel(2), pt.channel(2)
        local r = pt.spawn_thread(function(c)
          while c:recv() do end
          return select(2, c:recv())
        end, a)
        local s = pt.spawn_thread(function(c)
          while c:send(1) do end
          return select(2, c:send(1))
        end, b)
        local function settles(ch, n)
          local t0 = pt.now()
          while #ch ~= n do
            if pt.now() - t0 > 10 then return false end
            pt.sleep(0.001)
          end
          return true
        end
        math.randomseed(os.time())
        for round = 1, 200 do
          local p = pt.spawn_process(function(x, y)
            while true do x:send(1); y:recv() end
          end, a, b)
          pt.sleep(math.random() * 0.003)
          p:kill("KILL"); p:join(10)
          assert(settles(a, 0), "round " .. round .. ": the receiver sleeps beside " .. #a)
          assert(settles(b, 2), "round " .. round .. ": the sender sleeps beside room")
          local ok, bad = pt._shm_check()
          assert(ok, bad)
        end
        a:close(); b:close()
        assert(select(2, r:join(10)) == "closed" and select(2, s:join(10)) == "closed")
        print("ok")
      ]])
      assert.equal(0, status, out)
      assert.matches("ok", out)
    end)
  end)
end)
