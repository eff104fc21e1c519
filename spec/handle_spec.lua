-- The handle toolkit (src/handle.h): the check by metatable, and the last
-- checked userdata it remembers, for shared tables, arrays and channels,
-- then for pipes and workers.
local pt = require "procthread"
local H = require "helper"

-- x, released, is not remembered by the toolkit: with its metatable taken
-- away (debug.setmetatable; left so), f, a function of its kind, refuses
-- it, where the toolkit's fast path would take a remembered userdata
-- unchecked.  (Remembered after its release, its memory would be taken for
-- the kind's once freed and reused.)
local function not_remembered(x, f, expected)
  debug.setmetatable(x, nil)
  local ok, err = pcall(f, x, 1)
  assert.is_false(ok)
  assert.matches(expected, err, 1, true)
end

-- x, finalized in the same cycle as a table that keeps it (5.2+: __gc on
-- tables; 5.1 and LuaJIT: a proxy's __gc), after `use(x)`: x resurrected.
local function resurrected(new, use)
  local saved
  do
    local x = new()
    use(x)                                   -- remembered by the toolkit
    local keeper = { x = x }
    local function keep(t) saved = t.x end
    if newproxy then
      local p = newproxy(true)
      getmetatable(p).__gc = function() keep(keeper) end
      keeper.p = p
    else
      setmetatable(keeper, { __gc = keep })
    end
  end
  collectgarbage(); collectgarbage()
  assert(saved, "not resurrected")
  return saved
end

describe("handle toolkit", function()
  after_each(function() if jit then jit.flush() end end)
  H.no_leaks()

  local kinds = {
    { "shared table", function() return pt.shared_table() end, "__index", "shared table expected" },
    { "private array", function() return pt.array(1) end, "__index", "array expected" },
    { "shared array", function() return pt.array(1, "shared") end, "__index", "array expected" },
  }
  for _, k in ipairs(kinds) do
    local what, new, mm, expected = k[1], k[2], k[3], k[4]

    it(what .. ": a metamethod called on another kind of userdata raises, after a use", function()
      local x = new()
      local _ = x[1]                         -- its check remembers x
      local f = debug.getmetatable(x)[mm]
      local foreign = { io.stdout, pt.channel(), (pt.array(1)), pt.shared_table() }
      for _, u in ipairs(foreign) do
        if debug.getmetatable(u) ~= debug.getmetatable(x) then
          local ok, err = pcall(f, u, 1)
          assert.is_false(ok)
          assert.matches(expected, err)
        end
      end
      for _, u in ipairs(foreign) do if u ~= io.stdout then pcall(pt.release, u) end end
      foreign[2] = nil
      pt.release(x)
    end)

    it(what .. ": finalized, then resurrected by another finalizer: released, never reused", function()
      local saved = resurrected(new, function(x) local _ = x[1] end)
      local ok, err = pcall(function() return saved[1] end)
      assert.is_false(ok)
      assert.matches("released", err)
      not_remembered(saved, debug.getmetatable(saved)[mm], expected)
      saved = nil
      collectgarbage(); collectgarbage()
      -- new userdata may take its memory now: each is what it was made as
      for _ = 1, 200 do
        local u = pt.channel()
        local ok2 = pcall(function() return debug.getmetatable(new())[mm](u, 1) end)
        assert.is_false(ok2)
        u:close()
      end
      collectgarbage()
    end)

    -- the toolkit remembers two handles of a kind: each slot forgets
    for _, order in ipairs({ "other first", "other last" }) do
      it(what .. ": finalized while another handle is remembered too (" .. order .. "): released", function()
        local other = new()
        local saved = resurrected(new, function(x)
          if order == "other first" then local _ = other[1]; _ = x[1]
          else local _ = x[1]; _ = other[1] end
        end)
        local ok, err = pcall(function() return saved[1] end)
        assert.is_false(ok)
        assert.matches("released", err)
        assert.is_true((pcall(function() return other[1] end)))
        not_remembered(saved, debug.getmetatable(saved)[mm], expected)
        saved = nil
        pt.release(other)
        collectgarbage(); collectgarbage()
      end)
    end
  end
end)

-- Pipes and workers: every function of their metatables, by name.
local function functions_of(x)
  local mt, fns = debug.getmetatable(x), {}
  local methods = type(mt.__index) == "table" and mt.__index or mt.methods
  for _, t in ipairs { mt, methods } do
    for k, v in pairs(t) do
      if type(v) == "function" then fns[#fns + 1] = { k, v } end
    end
  end
  table.sort(fns, function(a, b) return a[1] < b[1] end)
  return fns
end

local function joined_thread()
  local w = pt.spawn_thread(function() return 1 end)
  assert(w:join(H.T))
  return w
end

-- n userdata of a handle's size (a pipe's and a worker's are the same, 16
-- bytes and one user value on 5.4) of the other kind than `what`, made
-- without keeping an fd or a thread: they may take the memory of a handle
-- of `what` freed before.
local function probes(what, n)
  local t = {}
  for i = 1, n do
    if what == "worker" then
      t[i] = pt.pipe()
      t[i]:close()
    else
      t[i] = pt.spawn_thread(function() end)
      assert(t[i]:join(H.T))
    end
  end
  return t
end

-- A userdata no procthread kind made (5.1 and LuaJIT: a bare one too).
local function plain_userdata()
  local t = { io.stdout }
  if newproxy then t[2] = newproxy(false) end
  return t
end

-- Collect until the only reference, box[1], is freed (a resurrected
-- userdata may take more than one cycle).
local function collect(box)
  local weak = setmetatable({ box[1] }, { __mode = "v" })
  box[1] = nil
  for _ = 1, 10 do
    collectgarbage()
    if weak[1] == nil then return end
  end
  error("not collected")
end

describe("handle toolkit: pipes and workers", function()
  after_each(function() if jit then jit.flush() end end)
  H.no_leaks()

  -- what, tname, new, use, and a function that neither crashes nor
  -- hangs when given another userdata as its own, but answers
  local kinds = {
    { "pipe", "procthread.Pipe", function() return pt.pipe() end,
      function(p) assert(p:send(1)); assert.are.equal(1, p:recv(H.T)) end, "__tostring" },
    { "worker", "procthread.Worker", joined_thread,
      function(w) assert.are.equal("succeeded", w:status()) end, "status" },
  }

  -- f, a function of what's, called on userdata that may hold the freed
  -- memory of one of its handles, raises "<tname> expected" for each.
  local function never_reused(f, what, tname)
    for _, u in ipairs(probes(what, 200)) do
      local ok, err = pcall(f, u)
      assert.is_false(ok)
      assert.matches(tname .. " expected", err, 1, true)
    end
  end

  for _, k in ipairs(kinds) do
    local what, tname, new, use, safe = k[1], k[2], k[3], k[4], k[5]

    it(what .. ": each method and metamethod called on another kind raises naming itself, after a use", function()
      local x, other = new(), (what == "pipe" and joined_thread or pt.pipe)()
      local st, ch = pt.shared_table(), pt.channel()
      local foreign = { { other, debug.getmetatable(other).__name }, { {}, "table" },
                        { st, "procthread.SharedTable" }, { ch, "procthread.Channel" },
                        { 42, "number" } }
      for _, u in ipairs(plain_userdata()) do
        foreign[#foreign + 1] = { u, debug.getmetatable(u) and debug.getmetatable(u).__name or "userdata" }
      end
      use(x)
      local fns = functions_of(x)
      assert.is_true(#fns >= 8)
      for _, f in ipairs(fns) do
        for _, u in ipairs(foreign) do
          local ok, err = pcall(f[2], u[1], 1)
          assert.is_false(ok)
          assert.are.equal(("bad argument #1 to '%s' (%s expected, got %s)"):format(f[1], tname, u[2]), err)
        end
      end
      use(x)                                 -- still itself
      if what == "pipe" then x:close() else other:close() end
      pt.release(st)
      ch:close()
    end)

    it(what .. ": finalized, then resurrected by another finalizer: released, never reused", function()
      local saved = resurrected(new, use)
      if what == "pipe" then
        assert.are.same({ nil, "closed" }, { saved:send(1) })
        assert.are.equal("procthread.Pipe (closed)", tostring(saved))
        saved:close()                        -- and again: nothing to do
      else
        local ok, err = pcall(saved.join, saved)
        assert.is_false(ok)
        assert.matches("join: worker handle has been released", err, 1, true)
        assert.are.equal("procthread.Worker (released)", tostring(saved))
      end
      local f = debug.getmetatable(saved)[safe] or debug.getmetatable(saved).methods[safe]
      not_remembered(saved, f, tname .. " expected")
      local box = { saved }
      saved = nil
      collect(box)
      never_reused(f, what, tname)
    end)
  end
  it("pipe: close, close_read, close_write, __close and __gc, in any order and again, are fine", function()
    for _, order in ipairs { { "close", "close" }, { "__gc", "close", "__close", "__gc" },
                             { "close_read", "__close", "close_write", "close" },
                             { "__close", "__gc", "close" } } do
      local p = pt.pipe()
      local mt = debug.getmetatable(p)
      for _, name in ipairs(order) do
        local f = mt[name] or mt.__index[name]
        assert.are.equal(0, select("#", f(p)))
      end
      assert.are.same({ nil, "closed" }, { p:send(1) })
      assert.are.same({ nil, "closed" }, { p:recv(0) })
      assert.are.same({}, { p:fds() } )
    end
  end)

  it("worker: __gc twice is fine; the handle is released after the first", function()
    local w = joined_thread()
    local gc = debug.getmetatable(w).__gc
    gc(w); gc(w)
    local ok, err = pcall(w.status, w)
    assert.is_false(ok)
    assert.matches("status: worker handle has been released", err, 1, true)
    assert.are.equal("procthread.Worker (released)", tostring(w))
  end)

  it("worker: a forked copy resurrected after its __gc is released there, never reused", function()
    -- in a process worker, the parent's handle is a copy that is not its
    -- own: its __gc forgets it all the same, so that the toolkit never
    -- keeps its address
    local box = { w = joined_thread() }
    local p = pt.spawn_process(function()
      local saved = resurrected(function() local w = box.w; box.w = nil; return w end,
                                function(w) pcall(w.status, w) end)
      local ok, err = pcall(saved.status, saved)
      assert(not ok and err:find("belongs to another process", 1, true), err)
      local status = debug.getmetatable(saved).methods.status
      not_remembered(saved, status, "procthread.Worker expected")
      local box1 = { saved }
      saved = nil
      collect(box1)
      never_reused(status, "worker", "procthread.Worker")
      return "none reused"
    end)
    assert.are.same({ true, "none reused" }, { p:join(H.T) })
    assert.are.equal("succeeded", box.w:status())
  end)

  it("pipe: <close> (5.4) closes it at the end of the scope, and on an error", function()
    if _VERSION ~= "Lua 5.4" then return pending("<close> needs 5.4") end
    local p, q = pt.pipe(), pt.pipe()
    assert(load([[local p = ...; do local c <close> = p end]]))(p)
    assert.are.same({ nil, "closed" }, { p:send(1) })
    assert(load([[local p = ...; do local c <close> = p end]]))(p)   -- again: fine
    local ok, err = pcall(assert(load([[local q = ...; local c <close> = q; error("boom") ]])), q)
    assert.is_false(ok)
    assert.matches("boom", err)
    assert.are.same({ nil, "closed" }, { q:recv(0) })
  end)
end)

-- A Lua snippet for a fresh interpreter: it prints "survived" at its end.
local function survives(code)
  local status, out = H.fresh(code .. "\nprint('survived')\n")
  assert.are.equal(0, status, out)
  assert.matches("survived", out, 1, true)
  return out
end

describe("handle metatables", function()
  after_each(function() if jit then jit.flush() end end)
  H.no_leaks()

  -- each kind made by the toolkit, its name, and how to end it
  local kinds = {
    { "procthread.SharedTable", function() return pt.shared_table() end, pt.release },
    { "procthread.Array", function() return pt.array(1) end },
    { "procthread.Array", function() return pt.array(1, "shared") end, pt.release },
    { "procthread.Pipe", function() return pt.pipe() end, function(p) p:close() end },
    { "procthread.Worker", joined_thread },
    { "procthread.Channel", function() return pt.channel() end, function(c) c:close() end },
    { "procthread.Semaphore", function() return pt.semaphore(0) end },
    { "procthread.Event", function() return pt.event() end },
    { "procthread.Barrier", function() return pt.barrier(2) end },
  }

  it("getmetatable answers the kind's name; its fields cannot be set from plain Lua", function()
    for _, k in ipairs(kinds) do
      local tname, x = k[1], k[2]()
      assert.are.equal(tname, getmetatable(x))
      assert.are.equal(tname, debug.getmetatable(x).__name)
      local ok = pcall(function() getmetatable(x).__gc = function() end end)
      assert.is_false(ok, tname)
      assert.is_function(debug.getmetatable(x).__gc)
      assert.is_false((pcall(setmetatable, x, {})), tname)
      if k[3] then k[3](x) end
    end
  end)

  -- the review's confuse_crash.lua: a kind's __gc replaced, a remembered
  -- handle collected, its memory reused by a handle of the other kind
  for _, victim in ipairs { "worker", "pipe" } do
    it(victim .. ": a kind's __gc cannot be replaced to leave a freed handle remembered", function()
      survives(([[
        local pt = require "procthread"
        local function joined() local w = pt.spawn_thread(function() return 1 end); assert(w:join(20)); return w end
        local victim = %q
        local x = victim == "worker" and joined() or pt.pipe()
        local f = victim == "worker" and x.status or x.fds
        local mt, real
        local ok, err = pcall(function()
          mt = getmetatable(x); real = mt.__gc; mt.__gc = function() end
        end)
        f(x)                                         -- remembered
        x = nil
        collectgarbage(); collectgarbage(); collectgarbage()
        if ok then mt.__gc = real end
        local tname = victim == "worker" and "procthread.Worker" or "procthread.Pipe"
        for _ = 1, 16 do
          local u = victim == "worker" and pt.pipe() or joined()
          local ok2, err2 = pcall(f, u)
          assert(not ok2 and err2:find(tname .. " expected", 1, true), tostring(err2))
          if victim == "worker" then u:close() end
        end
        assert(not ok and err:find("a string value", 1, true), tostring(err))
      ]]):format(victim))
    end)
  end

  it("worker: a methods field that is no table answers nil (the debug library), never crashes", function()
    survives([[
      local pt = require "procthread"
      local w = pt.spawn_thread(function() end)
      assert(w:join(20))
      local mt = debug.getmetatable(w)
      local methods = mt.methods
      mt.methods = 42
      assert(w.join == nil and w.kind == "thread")
      mt.methods = methods
      assert(w.join)
      assert(not pcall(function() getmetatable(w).methods = 42 end))
    ]])
  end)

  it("worker: a method on another process's handle names itself", function()
    local w = joined_thread()
    local p = pt.spawn_process(function()
      local r = {}
      for _, m in ipairs { "join", "status", "cancel", "kill", "info", "fd" } do
        r[#r + 1] = select(2, pcall(w[m], w))
      end
      return r
    end)
    local ok, r = p:join(H.T)
    assert.is_true(ok, r)
    for i, m in ipairs { "join", "status", "cancel", "kill", "info", "fd" } do
      assert.matches("^" .. m .. ": this worker belongs to another process %(pid %d+%)$", r[i])
    end
  end)
end)

describe("worker timeouts", function()
  it("a NaN timeout raises saying nan on every Lua (x86's 0/0 printed as -nan)", function()
    local w = pt.spawn_thread(function() return 1 end)
    for _, nan in ipairs { 0 / 0, -(0 / 0) } do
      local ok, err = pcall(w.join, w, nan)
      assert.is_false(ok)
      assert.are.equal("bad argument #2 to 'join' (timeout must be a number >= 0 or math.huge, got nan)", err)
      ok, err = pcall(pt.sleep, nan)
      assert.is_false(ok)
      assert.matches("(seconds must be a number >= 0 or math.huge, got nan)", err, 1, true)
    end
    assert.are.same({ true, 1 }, { w:join(H.T) })
  end)
end)
