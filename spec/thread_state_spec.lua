-- The Lua state a thread worker starts in: made by procthread itself (its
-- own allocator from the first block, the collector off while the
-- libraries open, the globals made at their final size), it must be what
-- a fresh interpreter's is.
local H = require "helper"
local pt = require "procthread"

local V = _VERSION:match("%d+%.%d+")
local JIT = type(jit) == "table"

describe("a thread worker's fresh state", function()
  H.no_leaks()

  it("has the globals and modules of a fresh interpreter, and nothing more", function()
    local status, out = H.fresh([[
      local function names(t, skip)
        local n = {}
        for k in pairs(t) do
          if type(k) == "string" and not (skip and skip[k]) and not k:match("^procthread") then
            n[#n + 1] = k
          end
        end
        table.sort(n)
        return table.concat(n, " ")
      end
      local function state()
        local env = getfenv and (getfenv(print) == _G and getfenv(string.format) == _G
                                 and getfenv(0) == _G) or "none"
        local ok, gc = pcall(collectgarbage, "isrunning")   -- not on 5.1
        if not ok then gc = "none" end
        return names(_G, { arg = true }), names(package.loaded), env, gc,
               getmetatable("").__index == string, type(io.stdout), package.config
      end
      local main = { state() }
      local pt = require "procthread"
      local r = { pt.spawn("thread", state):join(20) }
      assert(r[1] == true, tostring(r[2]))
      for i = 1, #main do
        if main[i] ~= r[i + 1] then
          error(("value %d: main %s, worker %s"):format(i, tostring(main[i]), tostring(r[i + 1])))
        end
      end
      print("same " .. #main)
    ]])
    assert.are.equal(0, status, out)
    assert.matches("same 7", out, 1, true)
  end)

  it("collects garbage from the worker's first allocation on", function()
    local w = pt.spawn("thread", function()
      local peak = 0
      for i = 1, 200000 do
        local t = { i, i + 1, tostring(i) }
        if i % 1000 == 0 then
          local kb = collectgarbage("count")
          if kb > peak then peak = kb end
        end
        t = nil
      end
      return peak
    end)
    local peak = H.join_ok(w)
    -- 200k garbage tables of about 100 bytes: some 20 MB without a collector
    assert.is_true(peak < 4096, "peak " .. peak .. " KiB")
  end)

  it("grows past its first block, and frees and grows what came from it", function()
    local w = pt.spawn("thread", function()
      local t = {}
      for i = 1, 100000 do t[i] = i end              -- the array grows out of the block
      local s = string.rep("ab", 300000)             -- one block bigger than it
      local u = {}
      for i = 1, 3000 do u["k" .. i] = i end         -- a hash part grown many times
      for i = 1, 3000, 2 do u["k" .. i] = nil end
      collectgarbage(); collectgarbage()
      local sum = 0
      for _, v in pairs(u) do sum = sum + v end
      return #t, t[100000], #s, sum
    end)
    local n, last, len, sum = H.join_ok(w)
    assert.are.equal(100000, n)
    assert.are.equal(100000, last)
    assert.are.equal(600000, len)
    assert.are.equal(1500 * 1501, sum)                 -- the even keys 2..3000
  end)

  if V == "5.4" and not JIT then
    it("warns as the interpreter does: off at first, @on and @off switch it", function()
      local script = [[
        local function warnings(tag)
          warn("hidden " .. tag)
          warn("@on")
          warn("shown ", tag, " in pieces")
          warn("@other")
          warn("@off")
          warn("hidden again " .. tag)
          warn("@on")
          warn("last " .. tag)
          io.stderr:flush()
        end
        warnings("main")
        local pt = require "procthread"
        assert(pt.spawn("thread", warnings, "worker"):join(20))
      ]]
      local status, out = H.fresh(script)
      assert.are.equal(0, status, out)
      for _, tag in ipairs { "main", "worker" } do
        assert.matches("Lua warning: shown " .. tag .. " in pieces\n", out, 1, true)
        assert.matches("Lua warning: last " .. tag .. "\n", out, 1, true)
      end
      assert.is_nil(out:find("hidden", 1, true), out)
      assert.is_nil(out:find("other", 1, true), out)
    end)
  end

  if JIT then
    it("LuaJIT: compiles hot loops and has the ffi", function()
      local w = pt.spawn("thread", function()
        local ffi = require "ffi"
        local buf = ffi.new("int[?]", 1000)
        local s = 0
        for i = 1, 1000000 do s = s + (i % 7) end
        for i = 0, 999 do buf[i] = i end
        return jit.status(), s, buf[999], ffi.abi("gc64")
      end)
      local on, s, last = H.join_ok(w)
      local want = 0
      for i = 1, 1000000 do want = want + (i % 7) end
      assert.is_true(on)
      assert.are.equal(want, s)
      assert.are.equal(999, last)
    end)
  end

  it("gets the spawner's package.path and cpath, as the environment set them or changed", function()
    local status, out = H.fresh([[
      local pt = require "procthread"
      local function paths() return package.path, package.cpath end
      local r = { pt.spawn("thread", paths):join(20) }
      assert(r[1] == true and r[2] == package.path and r[3] == package.cpath, "as set")
      local path, cpath = package.path, package.cpath
      package.path, package.cpath = "/nowhere/?.lua;" .. path, "/nowhere/?.so;" .. cpath
      r = { pt.spawn("thread", paths):join(20) }
      assert(r[2] == "/nowhere/?.lua;" .. path and r[3] == "/nowhere/?.so;" .. cpath, "changed")
      package.path, package.cpath = path, cpath
      r = { pt.spawn("thread", paths):join(20) }
      assert(r[2] == path and r[3] == cpath, "back")
      print("paths ok")
    ]])
    assert.are.equal(0, status, out)
    assert.matches("paths ok", out, 1, true)
  end)

  -- pt.fault("nomem_start", n): what a worker does when malloc fails for
  -- its state (its function never runs), on demand
  it("that cannot be made fails the worker, at its join and its fd, and runs nothing", function()
    finally(function() pt.fault("nomem_start", 0) end)
    local ran = pt.shared_table()
    pt.fault("nomem_start", 2)
    local w1 = pt.spawn("thread", function(t) t.ran = true end, ran)
    local w2 = pt.spawn("thread", function(t) t.ran = true end, ran)
    local r, i = pt.select({ w2 }, 10)
    assert.are.equal(w2, r)
    assert.are.equal(1, i)
    assert.are.same({ false, "cannot create a Lua state: not enough memory" }, { w1:join(10) })
    assert.are.same({ false, "cannot create a Lua state: not enough memory" }, { w2:join(10) })
    assert.is_nil(ran.ran)
    assert.are.same({ true, 3 }, { pt.spawn("thread", function() return 3 end):join(10) })  -- counted down
    assert.error_matches(function() pt.fault("nomem_start", -1) end,
      "bad argument #2 to 'fault' %(count must be an integer in 0%.%.1000000, got %-1%)")
    assert.error_matches(function() pt.fault("nomem_start", 1.5) end,
      "bad argument #2 to 'fault' %(count must be an integer in 0%.%.1000000, got 1%.5%)")
    assert.error_matches(function() pt.fault("nomem_start", "x") end, "bad argument #2 to 'fault'")
    assert.error_matches(function() pt.fault("nomem_start", 2 ^ 40) end,
      "bad argument #2 to 'fault' %(count must be an integer in 0%.%.1000000, got 1099511627776")
    pt.release(ran)
  end)

  it("a worker never sees the globals of the one before it on the same OS thread", function()
    for i = 1, 20 do
      local seen = H.join_ok(pt.spawn("thread", function(n)
        local before = tostring(rawget(_G, "left_behind")) .. " " .. tostring(rawget(string, "left_behind"))
        left_behind = n                                  -- luacheck: ignore
        string.left_behind = n
        return before
      end, i))
      assert.are.equal("nil nil", seen)
    end
  end)
end)

-- A join that finds the worker done skips the wait for the thread to let go
-- of the record unless w:fd() or pt.select made the done eventfd: joins,
-- fds, selects and cancels racing the worker's end must neither leak an fd
-- nor write one that is closed.
describe("a thread worker's end, raced", function()
  H.no_leaks()

  it("joins at once, after w:fd(), after pt.select, after a cancel: right answers, no fd left", function()
    for i = 1, 200 do
      local w = pt.spawn("thread", function(n) return n * 2 end, i)
      local how = i % 4
      if how == 1 then
        local fd = w:fd()
        assert.is_true(fd >= 0)
      elseif how == 2 then
        assert.equal(w, pt.select({ w }, H.T))
      elseif how == 3 then
        w:cancel()
      end
      local ok, v = w:join(H.T)
      if how == 3 then
        assert.is_true(ok == true and v == i * 2 or (ok == false and v == "cancelled"), tostring(v))
      else
        assert.is_true(ok, tostring(v))
        assert.equal(i * 2, v)
      end
    end
  end)

  it("at exit, workers that are ending as the program stops them all leave cleanly", function()
    local status, out = H.fresh([[
      local pt = require "procthread"
      pt.configure { at_exit = "stop" }
      for i = 1, 40 do pt.spawn("thread", function(n) return n end, i) end
      print("spawned")
    ]])
    assert.are.equal(0, status, out)
    assert.matches("spawned", out, 1, true)
  end)
end)
